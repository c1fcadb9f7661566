"""InfGen's reference definition: config, model, INPE, weights, cost model, memory model, value checks."""
from pathlib import Path

# The bundled demo checkpoint (config.json + model.safetensors) and its held-out photos (evening_glow.jpg,
# the demo's; coffee.jpg): a 1.1 M-parameter model trained from scratch (assets/demo/CARD.md).
DEMO_CHECKPOINT = Path(__file__).resolve().parent / "assets" / "demo"
