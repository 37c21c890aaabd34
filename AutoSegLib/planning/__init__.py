"""planning stage: `plan_experiment(fingerprint, dataset=None, gpu_memory_gb=8.0) -> Plans`.

Names are resolved lazily so that importing ``AutoSegLib.planning.plans`` stays light.
"""
_EXPORTS = {
    "plan_experiment": "AutoSegLib.planning.planner",
    "plan_configuration": "AutoSegLib.planning.planner",
    "Plans": "AutoSegLib.planning.plans",
    "ConfigurationPlan": "AutoSegLib.planning.plans",
    "NetworkTopology": "AutoSegLib.network.topology",
    "ResamplingSettings": "AutoSegLib.planning.plans",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'AutoSegLib.planning' has no attribute {name!r}")
