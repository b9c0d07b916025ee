"""``--format`` name -> importer."""

from typing import Callable, Dict

from data_prep.importers.amazon import import_amazon
from data_prep.importers.common import BuildOptions, Imported
from data_prep.importers.dien import import_dien
from data_prep.importers.din import import_din
from data_prep.importers.interactions import import_interactions
from data_prep.importers.remapped import import_remapped
from data_prep.importers.sequences import import_sequences
from data_prep.report import BuildReport, DataPrepError

IMPORTERS: Dict[str, Callable[[BuildOptions, BuildReport], Imported]] = {
    "amazon": import_amazon,
    "din": import_din,
    "dien": import_dien,
    "interactions": import_interactions,
    "sequences": import_sequences,
    "remapped": import_remapped,
}


def get_importer(name: str) -> Callable[[BuildOptions, BuildReport], Imported]:
    """Returns the importer of a ``--format`` name."""
    try:
        return IMPORTERS[name]
    except KeyError:
        raise DataPrepError(f"unknown --format {name!r}; choose from {sorted(IMPORTERS)}") from None
