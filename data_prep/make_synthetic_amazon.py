r"""Writes synthetic Amazon review + metadata files in the real 2014 formats.

The defaults match the size of the DIN paper's Electronics 5-core data
(1,689,188 reviews by 192,403 users of 63,001 items in 801 categories, and
498,196 metadata lines), so the full pipeline can be timed without the real
download:

  python data_prep/make_synthetic_amazon.py --output_dir /tmp/synthetic_amazon
  python data_prep/build.py --format amazon \
      --input /tmp/synthetic_amazon/reviews_Electronics_5.json.gz \
      --meta /tmp/synthetic_amazon/meta_Electronics.json.gz --output /tmp/electronics_synthetic

Reviews are strict JSON lines with every 2014 key (reviewerID, asin,
reviewerName, helpful, reviewText, overall, summary, unixReviewTime,
reviewTime), grouped by item as in the real file. Metadata lines are Python
dict literals as Python 2 printed them (single quotes, double quotes when a
string holds an apostrophe, ASCII only with ``\xNN`` / ``\n`` escapes) with
the 2014 keys (asin, title, price, imUrl, related, salesRank, brand,
categories, description), each key present with a realistic probability. Every user and every item has at least 5 reviews
and no review is an exact duplicate, so a build must find exactly the
requested counts.
"""

import gzip
import json
import os
import sys
import time
from typing import List

import numpy as np
from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_prep.cli import run_app  # noqa: E402
from data_prep.progress import progress  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", None, "Directory for reviews_<category>_5.json.gz and meta_<category>.json.gz.")
flags.DEFINE_string("category", "Electronics", "Category name used in the file names.")
flags.DEFINE_integer("users", 192403, "Number of reviewers (each gets >= 5 reviews).")
flags.DEFINE_integer("items", 63001, "Number of reviewed items (each gets >= 5 reviews).")
flags.DEFINE_integer("reviews", 1689188, "Number of review lines.")
flags.DEFINE_integer("categories", 801, "Number of distinct leaf categories among reviewed items.")
flags.DEFINE_integer("meta_items", 498196, "Number of metadata lines (reviewed items plus others).")
flags.DEFINE_integer("malformed_lines", 0, "Broken lines to insert into each file (tests the error path).")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_integer("compresslevel", 6, "gzip level of the output files.")

_ALPHABET = np.array(list("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
_WORDS = (
    "the a it is this for and with to of my on cable battery sound great works well price quality "
    "charger adapter screen case fast easy good bad would recommend after months use camera lens "
    "usb hdmi wireless mouse keyboard headphones speaker remote power cord plug it's doesn't I'm "
    'can\'t "pro" 5" 10\' caf\u00e9 na\u00efve \u00fcber \u2013 \u00bd'
).split()
_TOP_LEVEL = [
    "Computers & Accessories",
    "Camera & Photo",
    "Accessories & Supplies",
    "Car Electronics",
    "Home Audio",
    "Portable Audio & Video",
    "Television & Video",
    "GPS & Navigation",
    "Cell Phones & Accessories",
    "Office Electronics",
]
_BRANDS = [
    "Sony",
    "Logitech",
    "AmazonBasics",
    "Anker",
    "Belkin",
    "SanDisk",
    "Canon",
    "Nikon",
    "Panasonic",
    "Monster",
    "D'Addario",
    "Bose",
    "JVC",
    "Kingston",
    "Targus",
    "Case Logic",
    "Generic",
]


def _base36_codes(rng: np.random.Generator, count: int, width: int, prefix: str) -> List[str]:
    """Returns ``count`` distinct random upper-case base-36 keys of ``width`` characters."""
    space = 36**width
    values = np.unique(rng.integers(0, space, size=int(count * 1.1) + 16, dtype=np.int64))
    while len(values) < count:
        values = np.unique(np.concatenate([values, rng.integers(0, space, size=count, dtype=np.int64)]))
    values = rng.permutation(values)[:count]
    digits = np.empty((count, width), dtype="<U1")
    for column in range(width - 1, -1, -1):
        digits[:, column] = _ALPHABET[values % 36]
        values = values // 36
    return [prefix + "".join(row) for row in digits.tolist()]


def _make_texts(rng: np.random.Generator, count: int, mean_words: float, sigma: float) -> List[str]:
    lengths = np.maximum(1, rng.lognormal(np.log(mean_words), sigma, size=count).astype(np.int64))
    words = rng.integers(0, len(_WORDS), size=int(lengths.sum()))
    texts, start = [], 0
    for length in lengths.tolist():
        text = " ".join(_WORDS[w] for w in words[start : start + length])
        texts.append(text[:1].upper() + text[1:] + ".")
        start += length
    return texts


def _spread(rng: np.random.Generator, total: int, floor: int, weights: np.ndarray) -> np.ndarray:
    """Counts summing to ``total``, each >= ``floor``, the surplus split by ``weights``."""
    extra = total - floor * len(weights)
    if extra < 0:
        raise app.UsageError(f"{total} reviews cannot give {len(weights)} entities {floor} each")
    return floor + rng.multinomial(extra, weights / weights.sum())


def _write_reviews(path: str, rng: np.random.Generator, user_keys: List[str], item_keys: List[str]) -> None:
    users, items, reviews = len(user_keys), len(item_keys), FLAGS.reviews
    per_user = _spread(rng, reviews, 5, rng.lognormal(0.0, 1.3, size=users))
    per_item = _spread(rng, reviews, 5, 1.0 / (np.arange(items) + 20.0) ** 0.9)
    review_user = rng.permutation(np.repeat(np.arange(users, dtype=np.int64), per_user))
    review_item = np.repeat(np.arange(items, dtype=np.int64), per_item)
    day = 86400
    first, last = 946684800 // day, 1406073600 // day  # 2000-01-01 .. 2014-07-23, daily like the real file
    review_time = rng.integers(first, last, size=reviews, dtype=np.int64) * day
    while True:
        # Same user, item and day would be an exact duplicate that a build drops: move it a day later.
        key = (review_user * items + review_item) * (last + 4096) + review_time // day
        _, first_index = np.unique(key, return_index=True)
        repeated = np.ones(reviews, dtype=bool)
        repeated[first_index] = False
        if not repeated.any():
            break
        review_time[repeated] += day
    pool = min(40000, max(100, reviews // 10))  # distinct texts; small runs need few
    names = [json.dumps(text) for text in _make_texts(rng, pool // 8 + 1, 2, 0.3)]
    texts = [json.dumps(text) for text in _make_texts(rng, pool, 90, 0.9)]
    summaries = [json.dumps(text) for text in _make_texts(rng, pool // 2 + 1, 5, 0.5)]
    name_of = rng.integers(0, len(names), size=users)
    text_of = rng.integers(0, len(texts), size=reviews)
    summary_of = rng.integers(0, len(summaries), size=reviews)
    votes = rng.geometric(0.4, size=(reviews, 2)) - 1
    votes[:, 0] = np.minimum(votes[:, 0], votes[:, 1])
    overall = rng.integers(1, 6, size=reviews)
    stamps = review_time.astype("datetime64[s]").astype("datetime64[D]")
    years = stamps.astype("datetime64[Y]").astype(np.int64) + 1970
    months = stamps.astype("datetime64[M]").astype(np.int64) % 12 + 1
    days = (stamps - stamps.astype("datetime64[M]")).astype(np.int64) + 1
    template = (
        '{"reviewerID": "%s", "asin": "%s", "reviewerName": %s, "helpful": [%d, %d], "reviewText": %s, '
        '"overall": %d.0, "summary": %s, "unixReviewTime": %d, "reviewTime": "%02d %d, %d"}\n'
    )
    broken = set(rng.choice(reviews, size=min(FLAGS.malformed_lines, reviews), replace=False).tolist())
    with gzip.open(path, "wb", compresslevel=FLAGS.compresslevel) as handle:
        bar = progress(total=reviews, desc="reviews", unit="line", unit_scale=True)
        for start in range(0, reviews, 100000):
            stop = min(reviews, start + 100000)
            lines = []
            for r in range(start, stop):
                u = review_user[r]
                line = template % (
                    user_keys[u],
                    item_keys[review_item[r]],
                    names[name_of[u]],
                    votes[r, 0],
                    votes[r, 1],
                    texts[text_of[r]],
                    overall[r],
                    summaries[summary_of[r]],
                    review_time[r],
                    months[r],
                    days[r],
                    years[r],
                )
                if r in broken:
                    line = line[: len(line) // 2] + "\n"
                lines.append(line)
            handle.write("".join(lines).encode("utf-8"))
            bar.update(stop - start)
        bar.close()


def _as_python2_bytes(value):
    """Recodes text so that ``ascii()`` prints it as Python 2 printed UTF-8 byte strings."""
    if isinstance(value, str):
        return value if value.isascii() else value.encode("utf-8").decode("latin-1")
    if isinstance(value, list):
        return [_as_python2_bytes(element) for element in value]
    if isinstance(value, dict):
        return {key: _as_python2_bytes(element) for key, element in value.items()}
    return value


def _write_meta(path: str, rng: np.random.Generator, item_keys: List[str], other_keys: List[str]) -> None:
    reviewed, total = len(item_keys), len(item_keys) + len(other_keys)
    all_keys = item_keys + other_keys
    order = rng.permutation(total)
    leaf_names = []
    for index in range(max(FLAGS.categories, 1) + 700):
        style = index % 4
        if style == 0:
            leaf_names.append("Leaf Category %d" % index)
        elif style == 1:
            leaf_names.append("Men's Gadgets %d" % index)
        elif style == 2:
            leaf_names.append("Cables & Adapters %d" % index)
        else:
            leaf_names.append('Audio "Pro" %d' % index)
    # Reviewed items use exactly FLAGS.categories leaves (each at least once); others may use any.
    leaf_of = np.concatenate(
        [
            np.arange(FLAGS.categories),
            rng.integers(0, FLAGS.categories, size=reviewed - FLAGS.categories),
            rng.integers(0, len(leaf_names), size=total - reviewed),
        ]
    )
    pool = min(30000, max(100, total // 10))
    titles = _make_texts(rng, pool, 8, 0.4)
    descriptions = _make_texts(rng, pool, 60, 0.9)
    descriptions = [text.replace(" it ", " it\n", 1) if i % 7 == 0 else text for i, text in enumerate(descriptions)]
    related_pool = rng.integers(0, total, size=min(4000000, total * 20 + 1000))
    cursor = 0
    broken = set(rng.choice(total, size=min(FLAGS.malformed_lines, total), replace=False).tolist())
    draws = rng.random(size=(total, 8))
    counts = np.minimum(rng.geometric(1 / 30.0, size=(total, 3)), (100, 40, 4)) * (draws[:, 5:8] < (0.8, 0.6, 0.3))
    with gzip.open(path, "wb", compresslevel=FLAGS.compresslevel) as handle:
        bar = progress(total=total, desc="metadata", unit="line", unit_scale=True)
        lines = []
        for n, index in enumerate(order.tolist()):
            entry = {"asin": all_keys[index]}
            d = draws[index]
            if d[0] < 0.9:
                entry["imUrl"] = "http://ecx.images-amazon.com/images/I/%s._SY300_.jpg" % all_keys[index]
            if counts[index].any():
                related = {}
                for key, count in zip(("also_bought", "also_viewed", "bought_together"), counts[index].tolist()):
                    if count:
                        related[key] = [all_keys[j] for j in related_pool[cursor : cursor + count].tolist()]
                        cursor = (cursor + count) % (len(related_pool) - 200)
                entry["related"] = related
            if d[1] < 0.85:
                entry["title"] = titles[index % len(titles)]
            if d[2] < 0.8:
                entry["price"] = round(float(d[2]) * 250.0 + 0.99, 2)
            if d[3] < 0.7:
                entry["salesRank"] = {"Electronics": int(d[3] * 1e6)}
            if d[4] < 0.5:
                entry["brand"] = _BRANDS[index % len(_BRANDS)]
            if index < reviewed or d[4] > 0.03:
                leaf = leaf_names[leaf_of[index]]
                path_ = ["Electronics", _TOP_LEVEL[index % len(_TOP_LEVEL)], leaf]
                entry["categories"] = [["Electronics"], path_] if d[0] > 0.8 else [path_]
            if d[1] > 0.4:
                entry["description"] = descriptions[index % len(descriptions)]
            # The 2014 file is Python 2's repr of byte strings: ASCII only, UTF-8 bytes as \xNN escapes.
            line = ascii(_as_python2_bytes(entry))
            if n in broken:
                line = line[: len(line) // 2]
            lines.append(line + "\n")
            if len(lines) == 50000:
                handle.write("".join(lines).encode("utf-8"))
                bar.update(len(lines))
                lines = []
        handle.write("".join(lines).encode("utf-8"))
        bar.update(len(lines))
        bar.close()


def main(argv):
    del argv
    if not FLAGS.output_dir:
        raise app.UsageError("--output_dir is required")
    if FLAGS.meta_items < FLAGS.items or FLAGS.items < FLAGS.categories:
        raise app.UsageError("need meta_items >= items >= categories")
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    rng = np.random.default_rng(FLAGS.seed)
    started = time.time()
    user_keys = _base36_codes(rng, FLAGS.users, 12, "A")
    asins = _base36_codes(rng, FLAGS.meta_items, 7, "B00")
    item_keys, other_keys = asins[: FLAGS.items], asins[FLAGS.items :]
    reviews_path = os.path.join(FLAGS.output_dir, "reviews_%s_5.json.gz" % FLAGS.category)
    meta_path = os.path.join(FLAGS.output_dir, "meta_%s.json.gz" % FLAGS.category)
    _write_reviews(reviews_path, rng, user_keys, item_keys)
    _write_meta(meta_path, rng, item_keys, other_keys)
    for path in (reviews_path, meta_path):
        logging.info("wrote %s (%.1f MB)", path, os.path.getsize(path) / 1e6)
    logging.info("done in %.1f s", time.time() - started)


if __name__ == "__main__":
    run_app(main)
