"""Built-in unbalanced-Sinkhorn solvers."""

from otplug.plugins import Solver, hookimpl


@hookimpl
def otplug_solvers() -> list[Solver]:
    return [
        Solver(
            name="sinkhorn",
            factory="otplug.solvers.sinkhorn:LogSinkhornSolver",
            config_cls="otplug.solvers.configs:SinkhornConfig",
            summary="default: log-domain KL-unbalanced Sinkhorn on the cost's device; no underflow, warm start",
        ),
        Solver(
            name="pot",
            factory="otplug.solvers.pot_ref:PotSolver",
            config_cls="otplug.solvers.configs:PotConfig",
            summary="reference: POT sinkhorn_knopp_unbalanced on float64 NumPy (reg_type='kl')",
        ),
        Solver(
            name="pot-torch",
            factory="otplug.solvers.pot_ref:PotTorchSolver",
            config_cls="otplug.solvers.configs:PotConfig",
            summary="the same POT function through its torch backend, on the tensors' device",
        ),
    ]
