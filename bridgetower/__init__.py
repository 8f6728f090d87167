"""bridgetower: BridgeTower vision-language models from reusable layers on fused kernels."""

__version__ = "0.1.0"
