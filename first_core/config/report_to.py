"""`report_to` of `[teacher_train]` / `[student_train]`: where the `Trainer` logs its metrics.

The values are those of Hugging Face `TrainingArguments.report_to`: "none" (the default: no
reporting), "all" (every integration installed), one integration name, or a list of them.
They are checked when the config loads, before anything trains: an unknown name, or an
integration whose package is not installed, is a `ConfigError` naming the key. Nothing here
imports the integrations (or torch): installed means `importlib.util.find_spec` finds the
package, as transformers itself decides it.
"""

from __future__ import annotations

import importlib.util

from ..errors import ConfigError

# integration -> the packages transformers looks for (any one of them is enough), in the
# order of transformers' INTEGRATION_TO_CALLBACK (whose "kubeflow" is no package: transformers
# adds it by itself when its server's environment variable is set)
INTEGRATIONS: dict[str, tuple[str, ...]] = {
    "azure_ml": ("azureml",),
    "comet_ml": ("comet_ml",),
    "mlflow": ("mlflow",),
    "neptune": ("neptune",),
    "tensorboard": ("tensorboard", "tensorboardX"),
    "trackio": ("trackio",),
    "wandb": ("wandb",),
    "codecarbon": ("codecarbon",),
    "clearml": ("clearml",),
    "dagshub": ("dagshub",),
    "flyte": ("flytekit",),
    "dvclive": ("dvclive",),
    "swanlab": ("swanlab",),
}
NO_REPORTING = "none"


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a broken or half-removed install
        return False


def check_report_to(value: str | list[str], where: str) -> list[str]:
    """The integrations `value` names, as `TrainingArguments.report_to` takes them: `[]` for
    "none" (or an empty list), `["all"]` for "all" (the `Trainer` then picks whatever is
    installed), else the names; a `ConfigError` naming `where` otherwise."""
    names = [value] if isinstance(value, str) else list(value)
    if names in ([], [NO_REPORTING], ["all"]):
        return [] if names != ["all"] else names
    known = sorted(INTEGRATIONS)
    for name in names:
        if name in (NO_REPORTING, "all"):
            raise ConfigError(f"{where}: {name!r} cannot be combined with other values, got "
                              f"{names}")
        if name not in INTEGRATIONS:
            raise ConfigError(f"{where}: unknown integration {name!r}; expected "
                              f"{NO_REPORTING!r}, 'all' or some of {known}")
        packages = INTEGRATIONS[name]
        if not any(_installed(p) for p in packages):
            raise ConfigError(f"{where}: {name!r} needs the package {packages[0]!r}, which is "
                              f"not installed (python -m pip install {packages[0]}), or set "
                              f"{where} = {NO_REPORTING!r}")
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: repeated integration in {names}")
    return names

