"""The one source of settings.

Embedded defaults live in the section models (``_sections``, and each family's
parameters in ``_params``). They can be overridden, in increasing priority, by a JSON
file named in ``RECJOBS_CONFIG``, by environment variables (``RECJOBS_HOME``,
``RECJOBS_DATABASE_URL``, and nested keys with ``__`` such as
``RECJOBS_MODELS__ALS__FACTORS=128``), and by explicit overrides (Airflow params, CLI
flags): see :func:`load_settings`. Every level rejects unknown keys, NaN and
infinities, so a typo fails loudly instead of being ignored.

Light enough to import when Airflow parses a DAG: pydantic only (SQLAlchemy is
imported when a database URL is checked, built or masked).
"""

from recjobs.errors import SettingsError
from recjobs.models.registry import BUILT_ON_PEERS, FAMILIES
from recjobs.settings._load import ENV_PREFIX, load_settings
from recjobs.settings._operations import AlertsSettings, GuardSettings
from recjobs.settings._params import (
    ALSParams,
    EASEParams,
    ItemKNNParams,
    LightFMParams,
    ModelsSettings,
    PopularityParams,
    RankerParams,
    SequenceParams,
    TFRSParams,
    UserKNNParams,
)
from recjobs.settings._sections import (
    AirflowSettings,
    ColdStartSettings,
    EvaluateSettings,
    FeedbackSettings,
    GateSettings,
    IngestSettings,
    ItemSegmentsSettings,
    PublishSettings,
    RerankSettings,
    RulesSettings,
    RunsSettings,
    Settings,
    SplitSettings,
    database_url_problem,
    mask_url,
)

__all__ = [
    "BUILT_ON_PEERS", "ENV_PREFIX", "FAMILIES", "ALSParams", "AirflowSettings", "AlertsSettings", "ColdStartSettings", "EASEParams",
    "EvaluateSettings", "FeedbackSettings", "GateSettings", "GuardSettings", "IngestSettings", "ItemSegmentsSettings",
    "ItemKNNParams", "LightFMParams", "ModelsSettings",
    "PopularityParams", "PublishSettings", "RankerParams", "RerankSettings", "RulesSettings", "RunsSettings",
    "SequenceParams", "Settings", "SettingsError", "SplitSettings", "TFRSParams", "UserKNNParams",
    "database_url_problem", "load_settings", "mask_url",
]
