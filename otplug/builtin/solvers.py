"""Built-in solvers: KL-unbalanced Sinkhorn (default, and POT's as the reference) and balanced Sinkhorn."""

from otplug.plugins import Solver, hookimpl


@hookimpl
def otplug_solvers() -> list[Solver]:
    return [
        Solver(
            name="sinkhorn",
            factory="otplug.solvers.sinkhorn:LogSinkhornSolver",
            config_cls="otplug.solvers.configs:SinkhornConfig",
            problem="kl-unbalanced",
            summary="default: log-domain KL-unbalanced Sinkhorn on the cost's device; no underflow, warm start",
        ),
        Solver(
            name="pot",
            factory="otplug.solvers.pot_ref:PotSolver",
            config_cls="otplug.solvers.configs:PotConfig",
            problem="kl-unbalanced",
            dtype="float64",
            summary="reference: POT sinkhorn_knopp_unbalanced on float64 NumPy (reg_type='kl')",
        ),
        Solver(
            name="pot-torch",
            factory="otplug.solvers.pot_ref:PotTorchSolver",
            config_cls="otplug.solvers.configs:PotConfig",
            problem="kl-unbalanced",
            dtype="float64",  # POT's kernel-domain iteration underflows in float32 at reg <= 0.01 (issue #28)
            summary="the same POT function through its torch backend, on the tensors' device",
        ),
        Solver(
            name="sinkhorn-balanced",
            factory="otplug.solvers.sinkhorn:BalancedSinkhornSolver",
            config_cls="otplug.solvers.configs:SinkhornConfig",
            problem="balanced",
            summary="balanced OT (marginals = 'exact'): the log-domain Sinkhorn of 'sinkhorn' with exact marginals",
        ),
        Solver(
            name="pot-balanced",
            factory="otplug.solvers.pot_ref:PotBalancedSolver",
            config_cls="otplug.solvers.configs:PotBalancedConfig",
            problem="balanced",
            dtype="float64",
            summary="reference of balanced OT: POT ot.sinkhorn on float64 NumPy",
        ),
    ]
