"""The term's options. Every field becomes a key of the term's table in a native otplug config."""

import attrs

from otplug.terms.configs import non_negative


@attrs.frozen(kw_only=True)
class CosineConfig:
    src_key: str
    tgt_key: str | None = None
    embed_name: str | None = None
    use_learned_embed: bool = True  # False: cosine of the raw (flattened) values instead
    scale: float = attrs.field(default=1.0, validator=non_negative)

    @property
    def target_key(self) -> str:
        return self.tgt_key or self.src_key

    def contributes(self) -> bool:
        return self.scale > 0
