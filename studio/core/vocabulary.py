"""The scene vocabulary shared by the renderer, the prompt model and the evaluation gates.

Every word here is one token of the embedded models' tokenizers, so keep names single words.
"""

# Named backdrop colours (sRGB). Chosen far apart so that "nearest named colour" is a fair test.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 35),
    "orange": (235, 125, 25),
    "yellow": (235, 210, 45),
    "green": (45, 150, 65),
    "teal": (20, 140, 140),
    "blue": (35, 85, 205),
    "purple": (125, 55, 175),
    "pink": (240, 130, 180),
    "brown": (115, 70, 35),
    "black": (25, 25, 28),
    "white": (242, 242, 238),
    "grey": (128, 128, 128),
}

# Surface materials / textures the renderer can paint.
MATERIALS: tuple[str, ...] = ("plain", "marble", "wood", "fabric", "stripes", "bokeh")

# Lighting moods.
LIGHTING: tuple[str, ...] = ("soft", "bright", "dramatic")

# Scene layouts.
LAYOUTS: tuple[str, ...] = ("studio", "tabletop", "horizon")

# Product kinds the renderer can cut out.
PRODUCTS: tuple[str, ...] = ("bottle", "box", "shoe", "mug", "bag")

# The catalogue category of each product kind.
CATEGORIES: dict[str, str] = {
    "bottle": "beverage",
    "box": "cosmetics",
    "shoe": "footwear",
    "mug": "kitchen",
    "bag": "accessories",
}

# Interest tags users carry (the audience feature table's multi-hot column, the prompt model's brief).
INTEREST_TAGS: tuple[str, ...] = (
    "outdoors", "luxury", "tech", "fitness", "home", "travel",
    "eco", "fashion", "coffee", "beach", "nightlife", "minimal",
)
