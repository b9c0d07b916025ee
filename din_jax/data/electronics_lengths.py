"""The history lengths of the Amazon Electronics training set (the DIN paper's data).

``ELECTRONICS_HISTORY_LENGTH_COUNTS[n - 1]`` is the number of samples with a
history of ``n`` items, ``n = 1..100``, in
``data/amazon_electronics_din_sample/train_set_mini.csv``: 10,000 rows drawn at
random from the real training set (2,608,764 rows) of the authors' Amazon
Electronics data. Histories longer than 100 (71 of the 10,000, up to 331) are
counted at 100, the length they are cut to (``max_seq_len``).

The distribution is very skewed: median 4, mean 8.8 before the cut (8.3
after), 90th percentile 18, 99th percentile 85. ``tests/test_synthetic_lengths.py``
recomputes the table from the CSV.
"""

from typing import Tuple

ELECTRONICS_SAMPLE_FILE = "data/amazon_electronics_din_sample/train_set_mini.csv"
ELECTRONICS_MAX_LENGTH = 100

ELECTRONICS_HISTORY_LENGTH_COUNTS: Tuple[int, ...] = (
    1515, 1508, 1458, 1010, 772, 595, 423, 338, 258, 204, 201, 177, 150, 110, 89, 89, 81, 77, 58, 60,  # 1-20
    42, 37, 41, 31, 27, 43, 30, 29, 23, 23, 20, 20, 16, 18, 17, 12, 15, 12, 9, 11,  # 21-40
    11, 11, 16, 11, 13, 16, 14, 10, 9, 6, 6, 5, 3, 10, 3, 4, 5, 5, 11, 2,  # 41-60
    3, 3, 6, 2, 5, 3, 5, 3, 3, 7, 1, 2, 4, 2, 6, 2, 3, 5, 3, 3,  # 61-80
    0, 4, 0, 1, 4, 3, 2, 1, 1, 2, 0, 1, 2, 2, 3, 2, 1, 0, 3, 77,  # 81-100
)
