"""Deterministic synthetic data for the sandbox Catalog API.

Everything is generated from ``random.Random(seed)`` and an anchor date (today at
00:00 UTC by default), so the same seed gives the same data within a day while
"past" and "future" events stay past and future whenever the sandbox runs.

Records are kept as plain dicts already in the API's camelCase read shape, so the
HTTP layer only has to ``json.dumps`` them:

* ``data.sellers``  -- id -> SellerDto dict
* ``data.catalogs`` -- id -> CatalogExpandedDto dict (``sellers`` and ``lots`` included)
* ``data.lots``     -- id -> LotDto dict; sandbox image links are stored as
  origin-relative paths (``/images/{lot_id}/{n}.svg``) and made absolute by
  :meth:`SandboxData.lot_dto` with the origin of the request being answered.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

# The lot whose description carries markup, to check escaping in the UI.
HTML_LOT_ID = 10003
HTML_SNIPPET = "<b>bold</b> & <script>alert(1)</script>"

FIRST_SELLER_ID = 101
FIRST_CATALOG_ID = 1001
FIRST_LOT_ID = 10001
FIRST_IMAGE_ID = 500001
MAX_TOTAL_LOTS = 3800

# The event holding HTML_LOT_ID: seller 0's first upcoming event, always 150 lots.
BIG_EVENT_LOTS = 150

SELLER_NAMES = [
    "Harrington & Vale Auctioneers",
    "Bellweather Estate Auctions",
    "Copperline Auction Gallery",
    "Northgate Fine Art & Antiques",
    "Ashford Row Auction House",
    "Milbrook Estate Sales & Auctions",
    "Sterling Ridge Auctions",
    "Larkspur & Finch Auctioneers",
    "Old Mill Antiques Auction",
    "Westbury Galleries",
    "Cedar Hollow Auction Co.",
    "Blue Heron Auctions",
]

AGENTS = [
    "Dana Whitcomb",
    "Marcus Ellery",
    "Priya Raman",
    "Tom Okafor",
    "Helen Marsh",
    "Luis Ortega",
    "Grace Lindqvist",
    "Sam Beaumont",
]

# Each theme: catalog title and items as "SIZE|description" (S small, M medium, L large).
THEMES: list[tuple[str, list[str]]] = [
    (
        "Mid-Century Modern Furniture & Decor",
        [
            "L|Walnut sideboard with brass pulls",
            "L|Teak lounge chair and ottoman",
            "L|Rosewood credenza with sliding doors",
            "M|Sputnik brass chandelier",
            "M|Pair of ceramic table lamps with linen shades",
            "L|Danish teak dining table with two leaves",
            "L|Set of six bentwood dining chairs",
            "M|Fiberglass shell side chair",
            "M|Atomic wall clock, enameled steel",
            "S|Smoked glass decanter set",
            "M|Abstract oil on canvas, signed lower right",
            "L|Platform bed frame in oiled walnut",
        ],
    ),
    (
        "Fine Jewelry & Timepieces",
        [
            "S|14k yellow gold curb link bracelet",
            "S|Platinum diamond solitaire ring, approx. 1.2 ct",
            "S|Stainless steel automatic diver's watch",
            "S|Pair of South Sea pearl earrings",
            "S|Art Deco sapphire and diamond brooch",
            "S|18k rose gold chronograph wristwatch",
            "S|Sterling silver charm bracelet with 14 charms",
            "S|Cameo pendant in gold frame",
            "S|Gentleman's pocket watch, hunter case",
            "S|Emerald cut aquamarine cocktail ring",
        ],
    ),
    (
        "American Folk Art & Americana",
        [
            "M|Painted pine blanket chest",
            "M|Carved eagle wall plaque",
            "S|Stoneware crock with cobalt decoration",
            "M|Hooked rug, floral pattern",
            "M|Weathervane in copper, running horse",
            "L|Cherry tall case clock",
            "S|Pair of tin candle sconces",
            "M|Patchwork quilt, Log Cabin pattern",
            "S|Carved duck decoy",
            "L|Pine dry sink with original paint",
        ],
    ),
    (
        "Asian Art & Antiques",
        [
            "M|Blue and white porcelain ginger jar",
            "S|Carved jade pendant",
            "M|Cloisonne enamel vase",
            "L|Lacquered cabinet with gilt decoration",
            "M|Bronze figure of a seated scholar",
            "S|Pair of famille rose tea bowls",
            "M|Scroll painting, landscape with pavilions",
            "L|Elm altar table",
            "S|Ivory-tone resin netsuke group",
            "M|Satsuma earthenware covered jar",
        ],
    ),
    (
        "Sporting Collectibles & Memorabilia",
        [
            "S|Signed baseball in display case",
            "M|Framed game-worn jersey",
            "M|Vintage split bamboo fly rod",
            "S|Lot of 1950s trading cards",
            "M|Leather football helmet",
            "M|Antique brass ship's bell",
            "L|Mounted trophy fish on driftwood",
            "S|Commemorative pennant collection",
            "M|Wooden tennis racket set with press",
            "M|Autographed boxing glove",
        ],
    ),
    (
        "Estate Silver & Tableware",
        [
            "M|Sterling silver tea service, five pieces",
            "S|Set of twelve silver-plated dinner forks",
            "M|Georgian silver salver",
            "S|Crystal stemware, set of eight",
            "M|Bone china dinner service for twelve",
            "S|Pair of silver candlesticks",
            "M|Silver punch bowl with ladle",
            "S|Cut glass bowl, hobstar pattern",
            "M|Mahogany silver chest, fitted interior",
            "S|Enameled silver cigarette case",
        ],
    ),
    (
        "Modern & Contemporary Art",
        [
            "M|Color field acrylic on canvas",
            "M|Limited edition screenprint, numbered",
            "L|Large welded steel sculpture",
            "M|Mixed media collage on board",
            "S|Bronze maquette on marble base",
            "M|Gelatin silver print, framed",
            "L|Triptych oil on linen",
            "M|Ceramic vessel with crackle glaze",
            "M|Lithograph, pencil signed",
            "S|Blown glass paperweight",
        ],
    ),
    (
        "Victorian & Period Furniture",
        [
            "L|Mahogany secretary bookcase",
            "L|Carved oak hall tree with mirror",
            "M|Walnut marble-top side table",
            "L|Eastlake bedroom suite, three pieces",
            "M|Needlepoint footstool",
            "L|Chesterfield sofa in oxblood leather",
            "M|Gilt overmantel mirror",
            "L|Rosewood grand piano bench and cabinet",
            "M|Pair of balloon-back side chairs",
            "L|Burl walnut armoire",
        ],
    ),
    (
        "Rare Books, Maps & Manuscripts",
        [
            "S|First edition novel in original dust jacket",
            "M|Hand-colored county map, framed",
            "S|Leather-bound atlas, 1880s",
            "S|Signed letter from a territorial governor",
            "M|Antique celestial chart",
            "S|Set of illustrated natural history volumes",
            "S|Illuminated manuscript leaf",
            "M|Railroad survey map on linen",
            "S|Early photograph album",
            "S|Collection of travel broadsides",
        ],
    ),
    (
        "Lighting, Clocks & Scientific Instruments",
        [
            "M|Brass ship's chronometer in box",
            "M|Leaded glass table lamp",
            "S|Pocket barometer",
            "M|Bronze mantel clock with garniture",
            "M|Brass microscope in fitted case",
            "L|Floor-standing telescope on tripod",
            "M|Art Nouveau figural lamp",
            "S|Surveyor's compass",
            "M|Regulator wall clock",
            "M|Terrestrial globe on stand",
        ],
    ),
]

NOTES = [
    "",
    "",
    "Fragile, glass components",
    "Heavy; two-person lift",
    "Pick up by appointment only",
    "Keep upright",
    "Includes original box",
    "Disassembles for transport",
]

CONDITIONS = [
    "No visible damage",
    "Minor surface scratches",
    "Light wear consistent with age",
    "Small chip to rim",
    "Veneer lifting at one corner",
    "Frame shows minor losses",
    "Professionally restored",
    "Scuffs to base",
]

SIZE_PROFILES: dict[str, dict[str, Any]] = {
    # l, w, h in inches; wgt in lbs; value in dollars
    "S": {"l": (2, 14), "w": (2, 10), "h": (1, 8), "wgt": (0.2, 8), "value": (40, 4000),
          "cpack": ["1", "2", "PBOX"], "commodity": [301, 302, 303, 304]},
    "M": {"l": (10, 36), "w": (8, 24), "h": (6, 40), "wgt": (5, 60), "value": (80, 6000),
          "cpack": ["2", "3", "PBOX", "4"], "commodity": [201, 202, 203, 204, 205]},
    "L": {"l": (30, 96), "w": (18, 48), "h": (16, 84), "wgt": (40, 350),
          "value": (150, 12000), "cpack": ["3", "4", "CRATE"], "commodity": [101, 102, 103]},
}

# read-shape (camelCase) names of LotDataDto fields, keyed by pydantic field name
LOT_DATA_FIELDS = {
    "qty": "qty",
    "l": "l",
    "w": "w",
    "h": "h",
    "wgt": "wgt",
    "value": "value",
    "cpack": "cpack",
    "description": "description",
    "notes": "notes",
    "item_id": "itemID",
    "force_crate": "forceCrate",
    "noted_conditions": "notedConditions",
    "do_not_tip": "doNotTip",
    "commodity_id": "commodityId",
}

_LOT_NUMBER = re.compile(r"(\d+)(.*)", re.DOTALL)

CATALOG_SUMMARY_KEYS = (
    "id", "customerCatalogId", "agent", "title", "startDate", "endDate", "isCompleted",
)


def iso(dt: datetime) -> str:
    """ISO 8601 UTC timestamp as the API writes it, e.g. ``2026-12-03T15:00:00Z``."""
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def today_anchor() -> datetime:
    """Today's date at 00:00 UTC."""
    now = datetime.now(UTC)
    return datetime(now.year, now.month, now.day, tzinfo=UTC)


def lot_number_key(lot_number: str) -> tuple[int, int, str]:
    """Natural sort key: "2" < "2A" < "10"; lot numbers without leading digits go last."""
    match = _LOT_NUMBER.match(lot_number)
    if match is None:
        return (1, 0, lot_number)
    return (0, int(match.group(1)), match.group(2))


def image_path(lot_id: int, n: int) -> str:
    return f"/images/{lot_id}/{n}.svg"


class SandboxData:
    """The sandbox's sellers, catalogs (events) and lots, with lookups and updates."""

    def __init__(self, seed: int = 1, anchor: datetime | None = None) -> None:
        self.seed = seed
        self.anchor = anchor if anchor is not None else today_anchor()
        self.sellers: dict[int, dict[str, Any]] = {}
        self.catalogs: dict[int, dict[str, Any]] = {}
        self.lots: dict[int, dict[str, Any]] = {}
        self.seller_catalog_ids: dict[int, list[int]] = {}
        self._next_image_id = FIRST_IMAGE_ID
        self._build(random.Random(seed))
        # New records continue after the seeded ones; ids are never reused after a delete.
        self._next_id = {
            "seller": max(self.sellers) + 1,
            "catalog": max(self.catalogs) + 1,
            "lot": max(self.lots) + 1,
        }

    # ------------------------------------------------------------------ build

    def _build(self, rng: random.Random) -> None:
        display_ids = rng.sample(range(1000, 99999), len(SELLER_NAMES))
        inactive = rng.randrange(8, len(SELLER_NAMES))
        plans: list[tuple[int, bool, int]] = []  # (seller id, is_past, lot count)
        for index, name in enumerate(SELLER_NAMES):
            seller_id = FIRST_SELLER_ID + index
            self.sellers[seller_id] = {
                "id": seller_id,
                "name": name,
                "customerDisplayId": display_ids[index],
                "isActive": index != inactive,
            }
            self.seller_catalog_ids[seller_id] = []
            n_future = rng.randint(1, 3)
            n_past = rng.randint(1, 3)
            for k in range(n_future + n_past):
                plans.append((seller_id, k >= n_future, self._draw_lot_count(rng)))
        self._force_lot_counts(plans)

        catalog_numbers = rng.sample(range(400000, 499999), len(plans))
        for offset, (seller_id, is_past, lot_count) in enumerate(plans):
            self._build_catalog(
                rng, FIRST_CATALOG_ID + offset, seller_id, is_past, lot_count,
                str(catalog_numbers[offset]),
            )

        lot_id = FIRST_LOT_ID
        for catalog in self.catalogs.values():
            theme_items = self._theme_items(catalog["title"])
            for n in range(1, catalog["_lot_count"] + 1):
                self.lots[lot_id] = self._build_lot(rng, lot_id, catalog, n, theme_items)
                catalog["lots"].append({"id": lot_id, "lotNumber": str(n)})
                lot_id += 1
            del catalog["_lot_count"]

    @staticmethod
    def _draw_lot_count(rng: random.Random) -> int:
        bucket = rng.random()
        if bucket < 0.35:
            return rng.randint(5, 24)
        if bucket < 0.7:
            return rng.randint(25, 49)
        if bucket < 0.95:
            return rng.randint(50, 99)
        return rng.randint(100, 130)

    @staticmethod
    def _force_lot_counts(plans: list[tuple[int, bool, int]]) -> None:
        """Pin a few counts so every seed has the event sizes tests and demos rely on."""
        forced: dict[int, int] = {}
        first_of_seller: dict[int, int] = {}
        for i, (seller_id, _past, _count) in enumerate(plans):
            first_of_seller.setdefault(seller_id, i)
        firsts = list(first_of_seller.values())
        # seller 0's first (upcoming) event is the big one; it holds HTML_LOT_ID
        for i, count in zip(firsts, [BIG_EVENT_LOTS, 5, 25, 60, 75, 50, 25, 25], strict=False):
            forced[i] = count
        for i, count in forced.items():
            plans[i] = (plans[i][0], plans[i][1], count)
        total = sum(c for _s, _p, c in plans)
        order = sorted(range(len(plans)), key=lambda i: -plans[i][2])
        for i in order:  # shrink the largest unforced events until under budget
            if total <= MAX_TOTAL_LOTS:
                break
            if i not in forced:
                total -= plans[i][2] - 20
                plans[i] = (plans[i][0], plans[i][1], 20)

    def _build_catalog(
        self,
        rng: random.Random,
        catalog_id: int,
        seller_id: int,
        is_past: bool,
        lot_count: int,
        customer_catalog_id: str,
    ) -> None:
        if is_past:
            start = self.anchor - timedelta(days=rng.randint(6, 420))
        else:
            start = self.anchor + timedelta(days=rng.randint(2, 150))
        start = start.replace(hour=rng.choice([14, 15, 16, 18, 23]))
        end = start + timedelta(days=rng.randint(1, 3), hours=rng.choice([2, 4, 6]))
        title = rng.choice(THEMES)[0]
        catalog: dict[str, Any] = {
            "id": catalog_id,
            "customerCatalogId": customer_catalog_id,
            "agent": rng.choice(AGENTS),
            "title": title,
            "startDate": iso(start),
            "endDate": iso(end),
            "isCompleted": is_past,
            "sellers": [self.sellers[seller_id]],
            "lots": [],
            "_lot_count": lot_count,
        }
        self.catalogs[catalog_id] = catalog
        self.seller_catalog_ids[seller_id].append(catalog_id)

    @staticmethod
    def _theme_items(title: str) -> list[str]:
        for theme_title, items in THEMES:
            if theme_title == title:
                return items
        return THEMES[0][1]

    def _build_lot(
        self,
        rng: random.Random,
        lot_id: int,
        catalog: dict[str, Any],
        lot_number: int,
        theme_items: list[str],
    ) -> dict[str, Any]:
        size, text = rng.choice(theme_items).split("|", 1)
        profile = SIZE_PROFILES[size]
        if lot_id == HTML_LOT_ID:
            text = f"Oak keepsake box, lid inscribed {HTML_SNIPPET}"
        elif rng.random() < 0.2:
            text += rng.choice([", signed", ", circa 1960", ", with provenance", ", as found"])

        def span(key: str, step: float) -> float:
            low, high = profile[key]
            return round(rng.uniform(low, high) / step) * step or step

        length, width, height = span("l", 0.5), span("w", 0.5), span("h", 0.5)
        cpack = rng.choice(profile["cpack"])
        initial: dict[str, Any] = {
            "qty": 1 if rng.random() < 0.75 else rng.randint(2, 4),
            "l": length,
            "w": width,
            "h": height,
            "wgt": round(span("wgt", 0.1), 1),
            "value": float(span("value", 5.0)),
            "cpack": cpack,
            "description": text,
            "notes": rng.choice(NOTES),
            "itemID": rng.randint(100000, 999999),
            "forceCrate": cpack == "CRATE" or (size == "L" and rng.random() < 0.1),
            "notedConditions": rng.choice(CONDITIONS),
            "doNotTip": height > 1.5 * width or rng.random() < 0.08,
            "commodityId": rng.choice(profile["commodity"]),
        }
        overrides: list[dict[str, Any]] = []
        if lot_id % 101 == 0:  # a few lots arrive already remeasured
            overrides.append({
                "qty": initial["qty"],
                "l": length + 2.0,
                "w": width + 2.0,
                "h": height + 3.0,
                "wgt": round(initial["wgt"] + 5.0, 1),
                "cpack": "CRATE" if size == "L" else "4",
                "notes": "Remeasured at intake",
            })
        images = []
        for n in range(1, rng.randint(1, 3) + 1):
            images.append({"id": self._new_image_id(), "link": image_path(lot_id, n)})
        return {
            "id": lot_id,
            "customerItemId": f"{catalog['customerCatalogId']}-{lot_number:03d}",
            "initialData": initial,
            "overridenData": overrides,
            "catalogs": [{"catalogId": catalog["id"], "lotNumber": str(lot_number)}],
            "imageLinks": images,
        }

    def _new_image_id(self) -> int:
        image_id = self._next_image_id
        self._next_image_id += 1
        return image_id

    # ---------------------------------------------------------------- lookups

    def catalog_ids_with_lots(self, min_lots: int, max_lots: int | None = None) -> list[int]:
        """Ids of events holding at least ``min_lots`` (and at most ``max_lots``) lots."""
        return [
            cid for cid, c in self.catalogs.items()
            if len(c["lots"]) >= min_lots and (max_lots is None or len(c["lots"]) <= max_lots)
        ]

    def largest_catalog_id(self) -> int:
        return max(self.catalogs, key=lambda cid: (len(self.catalogs[cid]["lots"]), -cid))

    def catalog_by_customer_id(self, customer_catalog_id: str) -> dict[str, Any] | None:
        for catalog in self.catalogs.values():
            if catalog["customerCatalogId"] == customer_catalog_id:
                return catalog
        return None

    def catalogs_by_customer_id(self, customer_catalog_id: str) -> list[dict[str, Any]]:
        return [c for c in self.catalogs.values()
                if c["customerCatalogId"] == customer_catalog_id]

    def seller_by_display_id(self, customer_display_id: int) -> dict[str, Any] | None:
        for seller in self.sellers.values():
            if seller["customerDisplayId"] == customer_display_id:
                return seller
        return None

    def lot_by_customer_item_id(self, customer_item_id: str) -> dict[str, Any] | None:
        for lot in self.lots.values():
            if lot["customerItemId"] == customer_item_id:
                return lot
        return None

    def catalog_ids_for_seller(self, seller_id: int) -> list[int]:
        return list(self.seller_catalog_ids.get(seller_id, []))

    def past_catalog_ids(self) -> list[int]:
        return [cid for cid, c in self.catalogs.items() if c["isCompleted"]]

    def future_catalog_ids(self) -> list[int]:
        return [cid for cid, c in self.catalogs.items() if not c["isCompleted"]]

    def lot_ids_of_catalog(self, catalog_id: int) -> list[int]:
        """Lot ids of an event in lot-number order."""
        return [entry["id"] for entry in self.catalogs[catalog_id]["lots"]]

    # -------------------------------------------------------- read projections

    def catalog_dto(self, catalog_id: int) -> dict[str, Any]:
        """CatalogDto: the catalog without ``sellers`` and ``lots``."""
        catalog = self.catalogs[catalog_id]
        return {key: catalog[key] for key in CATALOG_SUMMARY_KEYS}

    def catalog_expanded(self, catalog_id: int) -> dict[str, Any]:
        """CatalogExpandedDto (the stored dict itself; do not mutate)."""
        return self.catalogs[catalog_id]

    def catalog_with_sellers(self, catalog_id: int) -> dict[str, Any]:
        """CatalogWithSellersDto: the catalog with ``sellers`` but without ``lots``."""
        return {**self.catalog_dto(catalog_id), "sellers": self.catalogs[catalog_id]["sellers"]}

    def seller_dto(self, seller_id: int) -> dict[str, Any]:
        """SellerDto (a copy)."""
        return dict(self.sellers[seller_id])

    def seller_expanded(self, seller_id: int) -> dict[str, Any]:
        """SellerExpandedDto: the seller plus its catalogs as CatalogDto."""
        return {
            **self.sellers[seller_id],
            "catalogs": [self.catalog_dto(cid) for cid in self.seller_catalog_ids[seller_id]],
        }

    def lot_dto(self, lot_id: int, origin: str = "") -> dict[str, Any]:
        """LotDto with sandbox image links made absolute against ``origin``."""
        lot = self.lots[lot_id]
        if not origin:
            return lot
        return {
            **lot,
            "imageLinks": [
                {"id": img["id"], "link": origin + img["link"]}
                if img["link"].startswith("/") else img
                for img in lot["imageLinks"]
            ],
        }

    # ---------------------------------------------------------------- updates

    def update_lot(
        self,
        lot_id: int,
        *,
        customer_item_id: Any = ...,
        image_links: Iterable[str] | None = None,
        overriden_data: list[dict[str, Any]] | None = None,
        catalogs: list[dict[str, Any]] | None = None,
        origin: str = "",
    ) -> dict[str, Any]:
        """Apply an update; arguments left at their default keep the stored value.

        ``overriden_data`` entries must already be in camelCase read shape.
        ``catalogs`` entries are ``{"catalogId": int, "lotNumber": str}``; unknown
        catalog ids raise ``ValueError`` before anything is changed.
        """
        lot = self.lots[lot_id]
        if catalogs is not None:
            unknown = [c["catalogId"] for c in catalogs if c["catalogId"] not in self.catalogs]
            if unknown:
                raise ValueError(f"Unknown catalog id(s): {unknown}")
        if customer_item_id is not ...:
            lot["customerItemId"] = customer_item_id
        if overriden_data is not None:
            lot["overridenData"] = [dict(entry) for entry in overriden_data]
        if image_links is not None:
            lot["imageLinks"] = self._merge_image_links(lot, list(image_links), origin)
        if catalogs is not None:
            self._move_lot(lot, [dict(c) for c in catalogs])
        return lot

    def _merge_image_links(
        self, lot: dict[str, Any], links: list[str], origin: str
    ) -> list[dict[str, Any]]:
        """Turn plain links back into ``{id, link}``, keeping ids of known links."""
        known: dict[str, dict[str, Any]] = {}
        for img in lot["imageLinks"]:
            known[img["link"]] = img
            if origin and img["link"].startswith("/"):
                known[origin + img["link"]] = img
        result = []
        for link in links:
            previous = known.pop(link, None)
            if previous is not None:
                known = {k: v for k, v in known.items() if v is not previous}
                result.append(previous)
            else:
                result.append({"id": self._new_image_id(), "link": link})
        return result

    def _move_lot(self, lot: dict[str, Any], catalogs: list[dict[str, Any]]) -> None:
        """Replace the lot's catalog links and keep the catalogs' ``lots`` lists in step."""
        lot_id = lot["id"]
        touched = {c["catalogId"] for c in lot["catalogs"]} | {c["catalogId"] for c in catalogs}
        lot["catalogs"] = catalogs
        numbers = {c["catalogId"]: c["lotNumber"] for c in catalogs}
        for catalog_id in touched:
            entries = [e for e in self.catalogs[catalog_id]["lots"] if e["id"] != lot_id]
            if catalog_id in numbers:
                entries.append({"id": lot_id, "lotNumber": numbers[catalog_id]})
                entries.sort(key=lambda e: (lot_number_key(e["lotNumber"]), e["id"]))
            self.catalogs[catalog_id]["lots"] = entries

    # --------------------------------------------------------- sellers: writes
    #
    # Catalogs embed their sellers by reference (the very dicts in ``self.sellers``), so
    # a seller changed in place is changed in every catalog that embeds it.

    def add_seller(self, name: str | None, customer_display_id: int,
                   is_active: bool) -> dict[str, Any]:
        seller_id = self._take_id("seller")
        self.sellers[seller_id] = {
            "id": seller_id,
            "name": name,
            "customerDisplayId": customer_display_id,
            "isActive": is_active,
        }
        self.seller_catalog_ids[seller_id] = []
        return self.sellers[seller_id]

    def update_seller(self, seller_id: int, **fields: Any) -> dict[str, Any]:
        """Set any of ``name``, ``customerDisplayId``, ``isActive`` (read-shape names)."""
        seller = self.sellers[seller_id]
        for key, value in fields.items():
            if key not in ("name", "customerDisplayId", "isActive"):
                raise KeyError(key)
            seller[key] = value
        return seller

    def delete_seller(self, seller_id: int) -> None:
        """Remove the seller, and remove it from every catalog that had it."""
        del self.sellers[seller_id]
        for catalog_id in self.seller_catalog_ids.pop(seller_id, []):
            catalog = self.catalogs[catalog_id]
            catalog["sellers"] = [s for s in catalog["sellers"] if s["id"] != seller_id]

    # -------------------------------------------------------- catalogs: writes

    def add_catalog(
        self,
        *,
        customer_catalog_id: str | None,
        agent: str | None,
        title: str | None,
        start_date: str,
        end_date: str,
        seller_ids: list[int],
    ) -> dict[str, Any]:
        """A new catalog (no lots yet) linked to ``seller_ids``; dates are ISO strings.
        Unknown seller ids raise ``ValueError`` before anything is changed."""
        self._check_sellers(seller_ids)
        catalog_id = self._take_id("catalog")
        self.catalogs[catalog_id] = {
            "id": catalog_id,
            "customerCatalogId": customer_catalog_id,
            "agent": agent,
            "title": title,
            "startDate": start_date,
            "endDate": end_date,
            "isCompleted": is_completed(end_date),
            "sellers": [],
            "lots": [],
        }
        self._set_catalog_sellers(catalog_id, seller_ids)
        return self.catalogs[catalog_id]

    def update_catalog(self, catalog_id: int, **fields: Any) -> dict[str, Any]:
        """Set any of ``customerCatalogId``, ``agent``, ``title``, ``startDate``,
        ``endDate`` (read-shape names) and ``sellerIds`` (moves the catalog between
        sellers). Unknown seller ids raise ``ValueError`` before anything is changed."""
        catalog = self.catalogs[catalog_id]
        seller_ids = fields.pop("sellerIds", None)
        if seller_ids is not None:
            self._check_sellers(seller_ids)
        for key, value in fields.items():
            if key not in ("customerCatalogId", "agent", "title", "startDate", "endDate"):
                raise KeyError(key)
            catalog[key] = value
        catalog["isCompleted"] = is_completed(catalog["endDate"])
        if seller_ids is not None:
            self._set_catalog_sellers(catalog_id, seller_ids)
        return catalog

    def delete_catalog(self, catalog_id: int) -> None:
        """Remove the catalog, and remove it from its sellers and from its lots (the lots
        themselves stay)."""
        catalog = self.catalogs.pop(catalog_id)
        for seller in catalog["sellers"]:
            ids = self.seller_catalog_ids.get(seller["id"], [])
            if catalog_id in ids:
                ids.remove(catalog_id)
        for entry in catalog["lots"]:
            lot = self.lots.get(entry["id"])
            if lot is not None:
                lot["catalogs"] = [c for c in lot["catalogs"] if c["catalogId"] != catalog_id]

    def _check_sellers(self, seller_ids: Iterable[int]) -> None:
        unknown = [sid for sid in seller_ids if sid not in self.sellers]
        if unknown:
            raise ValueError(f"Unknown seller id(s): {unknown}")

    def _set_catalog_sellers(self, catalog_id: int, seller_ids: Iterable[int]) -> None:
        """Replace the catalog's sellers; each seller's catalog list follows."""
        catalog = self.catalogs[catalog_id]
        wanted = list(dict.fromkeys(seller_ids))
        for seller in catalog["sellers"]:
            ids = self.seller_catalog_ids.get(seller["id"], [])
            if seller["id"] not in wanted and catalog_id in ids:
                ids.remove(catalog_id)
        catalog["sellers"] = [self.sellers[sid] for sid in wanted]
        for sid in wanted:
            ids = self.seller_catalog_ids.setdefault(sid, [])
            if catalog_id not in ids:
                ids.append(catalog_id)
                ids.sort()

    # ------------------------------------------------------------ lots: writes

    def add_lot(
        self,
        *,
        customer_item_id: str | None,
        initial_data: dict[str, Any],
        overriden_data: list[dict[str, Any]],
        catalogs: list[dict[str, Any]],
        image_links: list[str],
        origin: str = "",
    ) -> dict[str, Any]:
        """A new lot; data entries in camelCase read shape, ``catalogs`` as in
        :meth:`update_lot`. Unknown catalog ids raise ``ValueError`` before anything is
        changed."""
        self._check_catalogs(catalogs)
        lot_id = self._take_id("lot")
        lot: dict[str, Any] = {
            "id": lot_id,
            "customerItemId": customer_item_id,
            "initialData": dict(initial_data),
            "overridenData": [dict(entry) for entry in overriden_data],
            "catalogs": [],
            "imageLinks": [],
        }
        lot["imageLinks"] = self._merge_image_links(lot, image_links, origin)
        self.lots[lot_id] = lot
        self._move_lot(lot, [dict(c) for c in catalogs])
        return lot

    def delete_lot(self, lot_id: int) -> None:
        """Remove the lot, and remove it from every catalog that listed it."""
        lot = self.lots.pop(lot_id)
        for link in lot["catalogs"]:
            catalog = self.catalogs.get(link["catalogId"])
            if catalog is not None:
                catalog["lots"] = [e for e in catalog["lots"] if e["id"] != lot_id]

    def lot_overrides(self, customer_item_ids: Iterable[str]) -> list[dict[str, Any]]:
        """LotOverrideDto of each lot whose customer item id is asked for and that has an
        override: the override in effect (``overridenData[0]``, read shape) plus the
        customer item id; in the order asked, each lot once."""
        wanted = list(dict.fromkeys(customer_item_ids))
        by_item: dict[str, list[dict[str, Any]]] = {}
        for lot in self.lots.values():
            if lot["customerItemId"] in wanted and lot["overridenData"]:
                by_item.setdefault(lot["customerItemId"], []).append(lot)
        return [
            {**lot["overridenData"][0], "customerItemId": item}
            for item in wanted
            for lot in by_item.get(item, [])
        ]

    def _check_catalogs(self, catalogs: Iterable[dict[str, Any]]) -> None:
        unknown = [c["catalogId"] for c in catalogs if c["catalogId"] not in self.catalogs]
        if unknown:
            raise ValueError(f"Unknown catalog id(s): {unknown}")

    # ------------------------------------------------------------- bulk insert

    def bulk_insert(self, catalogs: list[dict[str, Any]], origin: str = "") -> dict[str, Any]:
        """Create or update catalogs, their sellers and their lots by customer ids.

        Each entry: ``customerCatalogId``, ``agent``, ``title``, ``startDate``, ``endDate``
        (ISO strings), ``sellers`` [{``name``, ``customerDisplayId``, ``isActive``}] and
        ``lots`` [{``customerItemId``, ``lotNumber``, ``imageLinks``, ``initialData``,
        ``overridenData`` (read shape)}]. A catalog is matched by ``customerCatalogId``, a
        seller by ``customerDisplayId``, a lot by ``customerItemId``; a match is updated,
        anything else created. Sellers are added to the catalog (none removed); a lot is
        linked to the catalog under its ``lotNumber`` (its other catalogs kept) and takes the
        entry's ``initialData``; an empty ``overridenData`` or ``imageLinks`` keeps the lot's
        own (ABConnect's SDK always sends both, empty by default, and a re-import must not
        erase intake corrections or photos). Returns how many of each were created and
        updated.
        """
        created: dict[str, set[int]] = {"sellers": set(), "catalogs": set(), "lots": set()}
        updated: dict[str, set[int]] = {"sellers": set(), "catalogs": set(), "lots": set()}
        for entry in catalogs:
            seller_ids = []
            for seller_entry in entry["sellers"]:
                seller = self.seller_by_display_id(seller_entry["customerDisplayId"])
                if seller is None:
                    seller = self.add_seller(seller_entry["name"],
                                             seller_entry["customerDisplayId"],
                                             seller_entry["isActive"])
                    created["sellers"].add(seller["id"])
                else:
                    self.update_seller(seller["id"], name=seller_entry["name"],
                                       isActive=seller_entry["isActive"])
                    updated["sellers"].add(seller["id"])
                seller_ids.append(seller["id"])
            fields = {key: entry[key] for key in ("agent", "title", "startDate", "endDate")}
            found = self.catalogs_by_customer_id(entry["customerCatalogId"])
            if found:
                catalog = found[0]
                existing = [s["id"] for s in catalog["sellers"]]
                self.update_catalog(catalog["id"], **fields, sellerIds=existing + seller_ids)
                updated["catalogs"].add(catalog["id"])
            else:
                catalog = self.add_catalog(
                    customer_catalog_id=entry["customerCatalogId"], seller_ids=seller_ids,
                    agent=fields["agent"], title=fields["title"],
                    start_date=fields["startDate"], end_date=fields["endDate"],
                )
                created["catalogs"].add(catalog["id"])
            for lot_entry in entry["lots"]:
                self._bulk_lot(catalog["id"], lot_entry, origin, created, updated)
        return {
            kind: {"created": len(created[kind]), "updated": len(updated[kind] - created[kind])}
            for kind in ("sellers", "catalogs", "lots")
        }

    def _bulk_lot(
        self,
        catalog_id: int,
        entry: dict[str, Any],
        origin: str,
        created: dict[str, set[int]],
        updated: dict[str, set[int]],
    ) -> None:
        link = {"catalogId": catalog_id, "lotNumber": entry["lotNumber"]}
        lot = self.lot_by_customer_item_id(entry["customerItemId"])
        if lot is None:
            lot = self.add_lot(
                customer_item_id=entry["customerItemId"], initial_data=entry["initialData"],
                overriden_data=entry["overridenData"], catalogs=[link],
                image_links=entry["imageLinks"], origin=origin,
            )
            created["lots"].add(lot["id"])
            return
        links = [c for c in lot["catalogs"] if c["catalogId"] != catalog_id] + [link]
        self.update_lot(
            lot["id"],
            image_links=entry["imageLinks"] or None,
            overriden_data=entry["overridenData"] or None,
            catalogs=links,
            origin=origin,
        )
        lot["initialData"] = dict(entry["initialData"])
        updated["lots"].add(lot["id"])

    def _take_id(self, kind: str) -> int:
        new_id = self._next_id[kind]
        self._next_id[kind] += 1
        return new_id


def is_completed(end_date: str) -> bool:
    """Whether an event (its ``endDate`` an ISO string as stored) has ended by now."""
    return end_date < iso(datetime.now(UTC))
