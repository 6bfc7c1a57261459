"""Built-in time reducers: how a (B, S, ...) feature becomes one vector per sample."""

from otplug.plugins import TimeReducer, hookimpl


@hookimpl
def otplug_time_reducers() -> list[TimeReducer]:
    return [
        TimeReducer(name="flatten", factory="otplug.features.reduce:flatten",
                    summary="(B,S,...) -> (B, S*...): every step counts (the seed's rule, default)"),
        TimeReducer(name="first", factory="otplug.features.reduce:first",
                    summary="keep the first (non-padded) step only"),
        TimeReducer(name="last", factory="otplug.features.reduce:last",
                    summary="keep the last non-padded step only"),
        TimeReducer(name="mean", factory="otplug.features.reduce:mean",
                    summary="average over non-padded steps"),
    ]
