"""Built-in metric sinks."""

from otplug.plugins import MetricSink, hookimpl


@hookimpl
def otplug_metric_sinks() -> list[MetricSink]:
    return [
        MetricSink(name="console", factory="otplug.sinks.console:ConsoleSink",
                   summary="one readable line per logged step"),
        MetricSink(name="jsonl", factory="otplug.sinks.jsonl:JsonlSink",
                   summary="metrics.jsonl in the output directory (always on in training)"),
        MetricSink(name="tensorboard", factory="otplug.sinks.tensorboard:TensorBoardSink",
                   summary="TensorBoard event files under <output>/tensorboard"),
        MetricSink(name="wandb", factory="otplug.sinks.wandb:WandbSink",
                   summary="Weights & Biases (off by default; needs `pip install wandb`)"),
        MetricSink(name="plan-heatmap", factory="otplug.sinks.heatmap:PlanHeatmapSink",
                   summary="transport-plan heatmap PNGs under <output>/plans every N steps"),
    ]
