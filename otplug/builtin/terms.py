"""Built-in cost terms."""

from otplug.plugins import CostTerm, hookimpl


@hookimpl
def otplug_cost_terms() -> list[CostTerm]:
    return [
        CostTerm(
            name="label",
            factory="otplug.terms.label:LabelTerm",
            config_cls="otplug.terms.configs:LabelConfig",
            summary="squared Euclidean distance of raw batch values (detached), optional last-axis dim_slice",
        ),
        CostTerm(
            name="embedding",
            factory="otplug.terms.embedding:EmbeddingTerm",
            config_cls="otplug.terms.configs:EmbeddingConfig",
            summary="squared distance of the policy's own encoder features (with gradient) + optional label cost; "
                    "scale-collapse options embed_norm, grad, stopgrad_encoder, variance_floor, covariance_weight",
        ),
        CostTerm(
            name="image",
            factory="otplug.terms.image:ImageTerm",
            config_cls="otplug.terms.configs:ImageConfig",
            summary="one camera (exact observation.images.* key): encoder embedding and/or raw-pixel cost; options "
                    "as embedding",
        ),
        CostTerm(
            name="action-slice",
            factory="otplug.terms.action_slice:ActionSliceTerm",
            config_cls="otplug.terms.configs:ActionSliceConfig",
            summary="action chunks (B,T,D), last-axis slice, padded steps (action_is_pad) excluded",
        ),
        CostTerm(
            name="joint",
            factory="otplug.terms.joint:JointTerm",
            config_cls="otplug.terms.configs:JointConfig",
            summary="DeepJDOT's joint cost: encoder features + the sim row's action chunk against the policy's "
                    "predicted chunk on the target frame (no target actions needed; gradient into the policy)",
        ),
    ]
