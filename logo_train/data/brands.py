"""The 28 classes of the embedded dataset and the brand artwork behind them.

Logos come from ``simple-icons-pack`` (CC0 SVG paths, with each brand's colour). The brand
names and logos are trademarks of their owners; they are used here only to make a realistic
classification task.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from dataclasses import dataclass
from importlib.metadata import version

# class name -> simple-icons slug. The reference project's brands that the package has, then
# the extra ones the embedded dataset adds (docs/rendering.md); "unknown" is drawn from
# UNKNOWN_SLUGS.
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

# The "unknown" class: what a badge detector crops that is none of the 27 brands. Non-vehicle
# icons (its false positives: sportswear, drinks, tech, shop signs) ...
UNKNOWN_NON_VEHICLE: tuple[str, ...] = (
    "apple", "android", "spotify", "github", "python", "docker", "nike", "adidas",
    "starbucks", "mcdonalds", "facebook", "instagram", "linux", "ubuntu", "firefox",
    "paypal", "visa", "mastercard", "netflix", "youtube", "whatsapp", "telegram",
    "reddit", "steam", "playstation", "intel", "samsung", "shell",
    # animal and figure silhouettes (sportswear, drinks, airlines): a silhouette alone is not
    # Peugeot's lion
    "puma", "redbull", "brave", "jordan", "lufthansa", "qantas",
)  # fmt: skip
# ... and the badges of other vehicle makers (a detector's true positives of brands the model
# does not know). Deliberately not every maker simple-icons has: Aston Martin, Bentley,
# Cadillac, Ferrari, Lamborghini, Maserati, MINI and Rolls-Royce are left out because the real
# development set's outside-brand photos are of them (docs/rendering.md): the rejection score
# it gives is then one of makers never rendered.
UNKNOWN_VEHICLE: tuple[str, ...] = (
    "acura", "bugatti", "chrysler", "dacia", "daf", "dsautomobiles", "infiniti", "iveco",
    "koenigsegg", "lada", "lucid", "man", "mclaren", "polestar", "proton", "ram", "scania",
    "seat", "smart", "vauxhall",
)  # fmt: skip
UNKNOWN_SLUGS: tuple[str, ...] = UNKNOWN_NON_VEHICLE + UNKNOWN_VEHICLE

# Badges most cars on the road still wear, which simple-icons replaced by a newer design:
# drawn here as plain geometry (24 x 24 viewBox, like simple-icons), rendered beside the
# current artwork (each with equal chance). Citroen's double chevrons without the 2022 oval;
# Renault's 1992-2021 lozenge (a solid frame, not the 2021 interlaced outline); Peugeot's
# standing lion of 2002-2021 (a silhouette in profile, forepaws raised, tail curled over the
# back), not the 2021 shield with a lion's head and the name, which few cars yet wear. A Volvo
# with its name cut out of a bar across the ring was tried and dropped: it lowered real Volvo
# photos (chrome letters on a dark bar) from 0.77-0.91 to 0.48-0.61 (docs/rendering.md).
CLASSIC_SVG: dict[str, str] = {
    "citroen-chevrons": (
        '<path d="M12 2 24 9.2v4.3L12 6.3 0 13.5V9.2zM12 10.5 24 17.7V22l-12-7.2L0 22v-4.3z"/>'
    ),
    "renault-lozenge": (
        '<path fill-rule="evenodd" d="M12 0 21.5 12 12 24 2.5 12zm0 5.2L6.6 12l5.4 6.8 5.4-6.8z"/>'
    ),
    "peugeot-lion": (
        '<path d="M3 4.5 4.5 2.5 7 1.2h3l2.3 1.3.7 2.3 1.5 2.2 1 2.5 1.5 1.5.8-2.5-.8-2.5.8-2.8 '
        "2.7-1.4 2 1.2-1.5.8-1.2 1.2.7 3 .1 3-1.1 3-1.5 2.5.5 2.5 2.5 2 .5 2H16l-.5-2-2-1.5-2 1-1 "
        "1.5 1 1h-6l1-1.5 2.3-2.5.7-2.5-1-2.2-2.5.3-3.2.4-1.3-1.2 1-1.1 3-.4 2.5-1-.5-1-3-.1-3-.4"
        '.3-1.6 3.2-.4 2-.5-1.5-.7-2 .4-1.7-.6 1.8-1z"/>'
    ),
}
CLASSIC_BADGES: dict[str, tuple[str, ...]] = {
    "Citroen": ("citroen-chevrons",),
    "Renault": ("renault-lozenge",),
    "Peugeot": ("peugeot-lion",),
}

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
    if slug in CLASSIC_SVG:
        owner = next(n for n, slugs in CLASSIC_BADGES.items() if slug in slugs)
        svg = (
            '<svg role="img" viewBox="0 0 24 24" xmlns="http://www.w3.org/2000/svg">'
            f"{CLASSIC_SVG[slug]}</svg>"
        )
        colour = load_artwork(BRAND_SLUGS[owner]).hex_colour
        return Artwork(slug=slug, title=f"{owner} (classic)", svg=svg, hex_colour=colour)
    import simple_icons_pack

    icon = simple_icons_pack.get_icon(slug)
    if icon is None:
        raise KeyError(f"simple-icons-pack has no icon '{slug}'")
    return Artwork(slug=icon.slug, title=icon.title, svg=icon.svg, hex_colour=icon.hex)


def wordmark(art: Artwork) -> str:
    """The name beside a logo in a lockup, in ASCII capitals: the brand's (a classic badge's
    owner's) or the icon's title ("SKODA", "PEUGEOT", "RED BULL")."""
    title = art.title.removesuffix(" (classic)")
    return unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode().upper()


def artwork_fingerprint() -> str:
    """12 hex digits that change when the artwork the renderer draws does: the slugs of every
    class, the classic badges' geometry and the simple-icons-pack release."""
    drawn = {
        "brands": BRAND_SLUGS,
        "classic": CLASSIC_SVG,
        "classic_of": CLASSIC_BADGES,
        "unknown": UNKNOWN_SLUGS,
        "simple_icons_pack": version("simple-icons-pack"),
    }
    return hashlib.sha256(json.dumps(drawn, sort_keys=True).encode()).hexdigest()[:12]


def class_slugs(name: str, classic: bool = True, unknown_vehicles: bool = True) -> tuple[str, ...]:
    """The artwork slugs one class draws from: its simple-icons artwork and (``classic``) any
    classic badge; the unknown class's non-vehicle icons and (``unknown_vehicles``) the other
    makers' badges."""
    if name == UNKNOWN:
        return UNKNOWN_SLUGS if unknown_vehicles else UNKNOWN_NON_VEHICLE
    return (BRAND_SLUGS[name], *(CLASSIC_BADGES.get(name, ()) if classic else ()))


def partner_index() -> list[int]:
    """For each class index, the index of its look-alike partner."""
    index = {n: i for i, n in enumerate(CLASS_NAMES)}
    partner = [-1] * len(CLASS_NAMES)
    for a, b in LOOKALIKE_PAIRS:
        partner[index[a]], partner[index[b]] = index[b], index[a]
    assert all(p >= 0 for p in partner), "every class needs a look-alike partner"
    return partner
