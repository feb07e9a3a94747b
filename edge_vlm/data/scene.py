"""Scenes of the synthetic world: what is in a picture, and how it is drawn (PIL ImageDraw, no torch).

The world is made to be learnable by a ~10-20M-parameter model that sees ~84-112 px: a plain background, at most
four items on a coarse plus-shaped grid of five slots (so positions have one-word names and items never overlap),
large objects, six well separated colours, distinct colours within a picture (so "the red object" is always one
object), and an optional single big black letter or digit. Small random jitter of position and size makes every
picture different.
"""

from __future__ import annotations

import importlib.util
import math
import random
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 225),
    "yellow": (240, 200, 0),
    "purple": (140, 50, 185),
    "orange": (255, 130, 0),
}
SHAPES = ("circle", "square", "triangle", "star", "cross")
PLURALS = {"cross": "crosses"}
SIZES = {"small": 0.16, "large": 0.26}  # side of an object's box, as a fraction of the picture's side
# slot -> centre (x, y) as fractions of the picture; a plus shape leaves no slot ambiguous ("top left" has no name).
SLOTS = {"top": (0.5, 1 / 6), "left": (1 / 6, 0.5), "center": (0.5, 0.5), "right": (5 / 6, 0.5), "bottom": (0.5, 5 / 6)}
SLOT_PHRASES = {"top": "at the top", "left": "on the left", "center": "in the center", "right": "on the right",
                "bottom": "at the bottom"}
LETTERS = ("A", "B", "E", "H", "K", "R")
DIGITS = ("2", "3", "4", "7")
GLYPH_COLOR = (20, 20, 20)
BACKGROUND = (255, 255, 255)
# Sizes and jitter are chosen so that items in neighbouring slots (1/3 of the side apart) can never touch.
GLYPH_SIZE = 0.28  # glyph height as a fraction of the picture's side
JITTER = 0.025  # largest shift of an item's centre, as a fraction of the side
SCALE_JITTER = 0.06  # largest relative change of a shape's size


def plural(shape: str) -> str:
    return PLURALS.get(shape, shape + "s")


@dataclass(frozen=True)
class Shape:
    shape: str
    color: str
    size: str
    slot: str
    dx: float = 0.0  # jitter, fractions of the side
    dy: float = 0.0
    scale: float = 1.0


@dataclass(frozen=True)
class Glyph:
    char: str
    slot: str
    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0

    @property
    def is_digit(self) -> bool:
        return self.char.isdigit()


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]
    glyph: Glyph | None = None

    def count(self, shape: str) -> int:
        return sum(s.shape == shape for s in self.shapes)

    def by_color(self, color: str) -> Shape | None:
        return next((s for s in self.shapes if s.color == color), None)

    def has(self, color: str, shape: str) -> bool:
        return any(s.color == color and s.shape == shape for s in self.shapes)

    def layout_key(self) -> tuple:
        """The scene without its jitter: two scenes with equal keys differ only by a few pixels."""
        glyph = (self.glyph.char, self.glyph.slot) if self.glyph else None
        return tuple(sorted((s.slot, s.shape, s.color, s.size) for s in self.shapes)), glyph

    def to_dict(self) -> dict:
        return {"shapes": [{"shape": s.shape, "color": s.color, "size": s.size, "slot": s.slot} for s in self.shapes],
                "glyph": {"char": self.glyph.char, "slot": self.glyph.slot} if self.glyph else None}


@dataclass(frozen=True)
class WorldSpec:
    """Knobs of the world. The defaults are the built-in model's world; `shape_repeat` is the chance that a new
    object copies the shape of one already there (so that counting has answers above one)."""

    max_shapes: int = 4
    max_items: int = 4
    shape_count_weights: tuple[float, ...] = (0.2, 0.3, 0.3, 0.2)  # for 1, 2, 3, 4 shapes
    glyph_probability: float = 0.4
    shape_repeat: float = 0.5
    colors: tuple[str, ...] = field(default_factory=lambda: tuple(COLORS))
    shapes: tuple[str, ...] = SHAPES
    glyphs: tuple[str, ...] = LETTERS + DIGITS


def _jitter(rng: random.Random) -> tuple[float, float, float]:
    return (rng.uniform(-JITTER, JITTER), rng.uniform(-JITTER, JITTER),
            1.0 + rng.uniform(-SCALE_JITTER, SCALE_JITTER))


def sample_scene(rng: random.Random, spec: WorldSpec | None = None) -> Scene:
    """A random scene: 1-4 shapes in distinct colours and slots, maybe one glyph."""
    spec = spec or WorldSpec()
    counts = list(range(1, len(spec.shape_count_weights) + 1))
    n_shapes = min(rng.choices(counts, weights=spec.shape_count_weights)[0], spec.max_shapes)
    with_glyph = n_shapes < spec.max_items and rng.random() < spec.glyph_probability
    slots = rng.sample(list(SLOTS), n_shapes + with_glyph)
    colors = rng.sample(list(spec.colors), n_shapes)
    kinds: list[str] = []
    for _ in range(n_shapes):
        repeat = kinds and rng.random() < spec.shape_repeat
        kinds.append(rng.choice(kinds) if repeat else rng.choice(spec.shapes))
    shapes = tuple(Shape(kind, color, rng.choice(list(SIZES)), slot, *_jitter(rng))
                   for kind, color, slot in zip(kinds, colors, slots))
    glyph = Glyph(rng.choice(spec.glyphs), slots[-1], *_jitter(rng)[:2]) if with_glyph else None
    return Scene(shapes, glyph)


# ---------------------------------------------------------------- drawing

def _star(cx: float, cy: float, radius: float) -> list[tuple[float, float]]:
    inner = radius * 0.45
    points = []
    for k in range(10):
        r = radius if k % 2 == 0 else inner
        angle = -math.pi / 2 + k * math.pi / 5
        points.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
    return points


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, side: float,
               color: tuple[int, int, int]) -> None:
    """Draw one shape whose box of side `side` is centred at (cx, cy)."""
    h = side / 2
    if shape == "circle":
        draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=color)
    elif shape == "square":
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=color)
    elif shape == "triangle":
        draw.polygon([(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)], fill=color)
    elif shape == "star":
        draw.polygon(_star(cx, cy + h * 0.1, h * 1.08), fill=color)  # a star fills less of its box: draw it larger
    elif shape == "cross":
        arm = side / 6
        draw.rectangle([cx - h, cy - arm, cx + h, cy + arm], fill=color)
        draw.rectangle([cx - arm, cy - h, cx + arm, cy + h], fill=color)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _font_path() -> str | None:
    """DejaVu Sans Bold as shipped by matplotlib, found without importing matplotlib (importing it is slow)."""
    try:
        spec = importlib.util.find_spec("matplotlib")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans-Bold.ttf"
        if path.is_file():
            return str(path)
    return None


def font_name() -> str:
    """Which font draws the glyphs (recorded in world.json: another font gives other pixels)."""
    return "DejaVuSans-Bold (matplotlib)" if _font_path() else "Pillow default (Aileron)"


@lru_cache(maxsize=64)
def glyph_font(pixel_size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    path = _font_path()
    if path:
        return ImageFont.truetype(path, pixel_size)
    return ImageFont.load_default(size=pixel_size)


def draw_glyph(draw: ImageDraw.ImageDraw, char: str, cx: float, cy: float, height: float,
               color: tuple[int, int, int] = GLYPH_COLOR) -> None:
    """Draw a character with its ink box centred at (cx, cy) and about `height` tall."""
    font = glyph_font(max(6, round(height * 1.3)))  # cap height is ~0.73 of the font size for DejaVu
    left, top, right, bottom = draw.textbbox((0, 0), char, font=font)
    draw.text((cx - (left + right) / 2, cy - (top + bottom) / 2), char, font=font, fill=color)


def draw_scene(scene: Scene, image_size: int) -> Image.Image:
    """Render a scene as an RGB picture of image_size x image_size."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for s in scene.shapes:
        fx, fy = SLOTS[s.slot]
        draw_shape(draw, s.shape, (fx + s.dx) * image_size, (fy + s.dy) * image_size,
                   SIZES[s.size] * s.scale * image_size, COLORS[s.color])
    if scene.glyph is not None:
        g = scene.glyph
        fx, fy = SLOTS[g.slot]
        draw_glyph(draw, g.char, (fx + g.dx) * image_size, (fy + g.dy) * image_size, GLYPH_SIZE * g.scale * image_size)
    return image


# ---------------------------------------------------------------- a moving scene for the streaming demo

class MovingScene:
    """Shapes gliding along smooth Lissajous paths, and a glyph that changes every `glyph_period_s` seconds.

    Deterministic in (seed, t): frame(t) is the same picture whenever it is asked for, so a synthetic camera can
    be replayed. `objects_at(t)` gives the ground truth (centres as fractions of the frame)."""

    def __init__(self, seed: int = 0, num_objects: int = 3, glyph_period_s: float = 4.0):
        rng = random.Random(f"moving/{seed}")
        colors = rng.sample(list(COLORS), num_objects)
        self.objects = []
        for color in colors:
            self.objects.append({
                "shape": rng.choice(SHAPES), "color": color, "size": rng.uniform(0.18, 0.26),
                "freq": (rng.uniform(0.05, 0.2), rng.uniform(0.05, 0.2)),  # Hz: slow enough to follow at a few fps
                "phase": (rng.uniform(0, 2 * math.pi), rng.uniform(0, 2 * math.pi)),
            })
        self.glyphs = [rng.choice(LETTERS + DIGITS) for _ in range(16)]
        self.glyph_period_s = glyph_period_s

    def objects_at(self, t: float) -> list[dict]:
        out = []
        for obj in self.objects:
            margin = obj["size"] / 2 + 0.02
            amplitude = 0.5 - margin
            x = 0.5 + amplitude * math.sin(2 * math.pi * obj["freq"][0] * t + obj["phase"][0])
            y = 0.5 + amplitude * math.sin(2 * math.pi * obj["freq"][1] * t + obj["phase"][1])
            out.append({"shape": obj["shape"], "color": obj["color"], "x": x, "y": y, "size": obj["size"]})
        return out

    def glyph_at(self, t: float) -> str:
        return self.glyphs[int(math.floor(t / self.glyph_period_s)) % len(self.glyphs)]

    def frame(self, t: float, size: int | tuple[int, int] = 224) -> Image.Image:
        width, height = (size, size) if isinstance(size, int) else size
        if width <= 0 or height <= 0:
            raise ValueError(f"frame size must be positive, got {size}")
        image = Image.new("RGB", (width, height), BACKGROUND)
        draw = ImageDraw.Draw(image)
        side = min(width, height)
        draw_glyph(draw, self.glyph_at(t), width * 0.12, height * 0.14, side * 0.2)
        for obj in self.objects_at(t):
            draw_shape(draw, obj["shape"], obj["x"] * width, obj["y"] * height, obj["size"] * side,
                       COLORS[obj["color"]])
        return image


@lru_cache(maxsize=8)
def _moving_scene(seed: int) -> MovingScene:
    return MovingScene(seed)


def moving_scene_frame(t: float, size: int | tuple[int, int] = 224, seed: int = 0) -> Image.Image:
    """The synthetic camera: the moving scene of `seed` at time `t` (seconds), `size` px (int or (width, height))."""
    return _moving_scene(seed).frame(t, size)
