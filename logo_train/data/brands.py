"""The 28 classes of the embedded dataset and the brand artwork behind them.

Logos come from ``simple-icons-pack`` (CC0 SVG paths, with each brand's colour). The brand
names and logos are trademarks of their owners; they are used here only to make a realistic
classification task.
"""

from __future__ import annotations

from dataclasses import dataclass

# class name -> simple-icons slug. The reference project's brands that the package has, then
# the extra ones named in DESIGN.md; "unknown" is drawn from UNKNOWN_SLUGS.
BRAND_SLUGS: dict[str, str] = {
    "Audi": "audi",
    "BMW": "bmw",
    "Chevrolet": "chevrolet",
    "Citroen": "citroen",
    "Fiat": "fiat",
    "Ford": "ford",
    "Honda": "honda",
    "Hyundai": "hyundai",
    "Jeep": "jeep",
    "Kia": "kia",
    "MG-Motor": "mg",
    "Mahindra": "mahindra",
    "Maruti-Suzuki": "suzuki",
    "Mazda": "mazda",
    "Mitsubishi": "mitsubishi",
    "Nissan": "nissan",
    "Opel": "opel",
    "Peugeot": "peugeot",
    "Porsche": "porsche",
    "Renault": "renault",
    "Skoda": "skoda",
    "Subaru": "subaru",
    "Tata": "tata",
    "Tesla": "tesla",
    "Toyota": "toyota",
    "Volkswagen": "volkswagen",
    "Volvo": "volvo",
}
UNKNOWN = "unknown"

# Non-vehicle icons that make up the "unknown" class (a detector's false positives).
UNKNOWN_SLUGS: tuple[str, ...] = (
    "apple", "android", "spotify", "github", "python", "docker", "nike", "adidas",
    "starbucks", "mcdonalds", "facebook", "instagram", "linux", "ubuntu", "firefox",
    "paypal", "visa", "mastercard", "netflix", "youtube", "whatsapp", "telegram",
    "reddit", "steam", "playstation", "intel", "samsung", "shell",
)  # fmt: skip

# Look-alike partners for "pairs" label noise: a flipped label becomes the partner's.
# Shapes that a badge photo confuses (H marks, ovals, roundels, shields, T marks, wordmarks);
# 28 classes make 14 pairs, Mahindra/unknown is the leftover one.
LOOKALIKE_PAIRS: tuple[tuple[str, str], ...] = (
    ("Honda", "Hyundai"),
    ("Toyota", "Mazda"),
    ("BMW", "Volvo"),
    ("Volkswagen", "Skoda"),
    ("Peugeot", "Porsche"),
    ("Renault", "Citroen"),
    ("Mitsubishi", "Maruti-Suzuki"),
    ("Nissan", "Kia"),
    ("Tesla", "Tata"),
    ("Ford", "Jeep"),
    ("Fiat", "MG-Motor"),
    ("Audi", "Subaru"),
    ("Chevrolet", "Opel"),
    ("Mahindra", UNKNOWN),
)

CLASS_NAMES: tuple[str, ...] = tuple(sorted([*BRAND_SLUGS, UNKNOWN], key=str.lower))


@dataclass(frozen=True)
class Artwork:
    slug: str
    title: str
    svg: str
    hex_colour: str

    @property
    def rgb(self) -> tuple[int, int, int]:
        h = self.hex_colour.lstrip("#")
        return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


def load_artwork(slug: str) -> Artwork:
    """The SVG and brand colour of one simple-icons slug."""
    import simple_icons_pack

    icon = simple_icons_pack.get_icon(slug)
    if icon is None:
        raise KeyError(f"simple-icons-pack has no icon '{slug}'")
    return Artwork(slug=icon.slug, title=icon.title, svg=icon.svg, hex_colour=icon.hex)


def class_slugs(name: str) -> tuple[str, ...]:
    """The artwork slugs one class draws from."""
    if name == UNKNOWN:
        return UNKNOWN_SLUGS
    return (BRAND_SLUGS[name],)


def partner_index() -> list[int]:
    """For each class index, the index of its look-alike partner."""
    index = {n: i for i, n in enumerate(CLASS_NAMES)}
    partner = [-1] * len(CLASS_NAMES)
    for a, b in LOOKALIKE_PAIRS:
        partner[index[a]], partner[index[b]] = index[b], index[a]
    assert all(p >= 0 for p in partner), "every class needs a look-alike partner"
    return partner
