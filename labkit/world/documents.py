"""The clean documents of the world, in six genres, written from the knowledge base.

Encyclopedia articles, short stories, how-to texts, dialogues, question-and-answer pages and
small Python modules. Each genre draws from many paraphrases and a broad filler vocabulary, so a
tiny model meets every fact many times, in many wordings.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from .code import code_document
from .kb import Fact, World
from .phrasing import ASK_CORPUS, STATE, fill

GENRES = ("encyclopedia", "story", "howto", "dialogue", "faq", "code")
# Teacher's educational value per genre (FineWeb-Edu style 0-5; noise added per page).
GENRE_EDU = {"encyclopedia": 4, "howto": 3, "faq": 3, "code": 3, "story": 2, "dialogue": 1}


@dataclass
class Document:
    id: str
    genre: str
    title: str
    text: str
    entity: str
    facts: list[tuple[str, str, str]] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"id": self.id, "genre": self.genre, "title": self.title, "text": self.text,
                "entity": self.entity, "facts": [list(f) for f in self.facts]}


def facts_about(world: World, name: str) -> list[Fact]:
    return [f for f in world.facts() if f.subject == name]


def state(rng: random.Random, fact: Fact) -> str:
    return fill(rng.choice(STATE[fact.relation]), fact.subject, fact.object)


FILLER = {
    "country": [
        "{s} has a {climate} climate for most of the year.",
        "The main industry of {s} is {industry}.",
        "About {pop} million people live in {s}.",
        "{s} was founded in the year {founded}.",
        "Visitors often say that the people of {s} are friendly and patient.",
        "The roads of {s} are old, and many of them follow ancient trade routes.",
        "Every spring, the towns of {s} hold a festival with music and long meals.",
        "Children in {s} learn to swim before they learn to read.",
    ],
    "city": [
        "About {pop} thousand people live in {s}.",
        "{s} is known for {known_for}.",
        "The old market of {s} opens before sunrise.",
        "Many bridges cross the water in {s}, and some of them are made of stone.",
        "Travellers arrive in {s} by boat, by cart or on foot.",
    ],
    "person": [
        "{s} was born in the year {born}.",
        "As a child, {s} spent long hours watching the river.",
        "Friends described {s} as curious, stubborn and kind.",
        "Late in life, {s} wrote a short book about the work of a lifetime.",
    ],
    "animal": [
        "The {s} is a {size} animal.",
        "The {s} is shy and rarely comes close to people.",
        "Young {s}s stay with their mothers through the first winter.",
        "In the evening, the call of the {s} can be heard from far away.",
    ],
    "substance": [
        "{S} must be stored in a dry place.",
        "Traders carry {s} in sealed jars.",
        "In old books, {s} is called a gift of the earth.",
        "A small amount of {s} goes a long way.",
    ],
    "invention": [
        "The {s} was first shown to the public in {year}.",
        "Early models of the {s} were heavy and hard to repair.",
        "Today the {s} is still found in many workshops.",
        "The design of the {s} has hardly changed since it was invented.",
    ],
}


def _kind_and_extras(world: World, name: str) -> tuple[str, dict]:
    e = world.by_name[name]
    kind = type(e).__name__.lower()
    extras = {"s": name, "S": name[:1].upper() + name[1:]}
    if kind == "country":
        extras.update(climate=e.climate, industry=e.industry, pop=e.population, founded=e.founded)
    elif kind == "city":
        extras.update(pop=e.population, known_for=("the " + e.known_for) if any(
            i.name == e.known_for for i in world.inventions) else e.known_for)
    elif kind == "person":
        extras.update(born=e.born)
    elif kind == "animal":
        extras.update(size=e.size)
    elif kind == "invention":
        extras.update(year=e.year)
    return kind, extras


def encyclopedia(world: World, rng: random.Random, name: str) -> tuple[str, str, list[Fact]]:
    kind, extras = _kind_and_extras(world, name)
    facts = facts_about(world, name)
    chosen = rng.sample(facts, k=max(2, min(len(facts), rng.randint(2, len(facts)))))
    fillers = rng.sample(FILLER[kind], k=rng.randint(1, 3))
    sentences = [state(rng, f) for f in chosen] + [t.format(**extras) for t in fillers]
    rng.shuffle(sentences)
    title = name if kind != "animal" and kind != "substance" else name.capitalize()
    paragraphs = [" ".join(sentences[: len(sentences) // 2 + 1]), " ".join(sentences[len(sentences) // 2 + 1:])]
    return title, "\n\n".join(p for p in paragraphs if p), chosen


OPENINGS = [
    "Long ago in {city}, {aprof} named {name} dreamed of travelling.",
    "{name} woke early on the morning of the market in {city}.",
    "Nobody in {city} expected {name} to leave, but one day {pron} packed a bag.",
    "It was raining in {city} when {name}, {aprof} from the old town, heard the news.",
]
ENDINGS = [
    "When {name} came home, {pron} told everyone about the journey.",
    "Years later, {name} still remembered that trip.",
    "That night {name} wrote everything down in a small blue notebook.",
    "{name} smiled, because the long road had been worth it.",
]
PRONOUNS = [("she", "her"), ("he", "him")]


def a_an(word: str) -> str:
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def story(world: World, rng: random.Random, name: str) -> tuple[str, str, list[Fact]]:
    person = world.by_name[name]
    pron, obj = rng.choice(PRONOUNS)
    country = rng.choice(world.countries)
    animal = world.by_name[country.animal]
    substance = rng.choice(world.substances)
    vars_ = dict(name=person.name, city=person.birthplace, aprof=a_an(person.profession), pron=pron, obj=obj,
                 Pron=pron.capitalize(), country=country.name, capital=country.capital,
                 lang=country.language, cur=country.currency, animal=animal.name,
                 colour=animal.colour, acolour=a_an(animal.colour), diet=animal.diet, sub=substance.name, use=substance.use,
                 subcol=substance.colour)
    middle = [
        "{Pron} took the long road to {capital}, the capital of {country}.",
        "In {country}, everyone spoke {lang}, so {name} learned a few words of {lang}.",
        "At the market {pron} paid with the {cur}, the money of {country}.",
        "On the way {pron} saw a {animal}, {acolour} animal that eats {diet}.",
        "The {animal} is the national animal of {country}, and children draw it on walls.",
        "A merchant sold {obj} a jar of {sub}, which people use for {use}.",
        "The {sub} was {subcol}, and it shone in the evening light.",
    ]
    picked = rng.sample(middle, k=rng.randint(3, 5))
    sentences = [rng.choice(OPENINGS)] + picked + [rng.choice(ENDINGS)]
    text = " ".join(s.format(**vars_) for s in sentences)
    facts = [Fact(person.name, "birthplace", person.birthplace, "person"),
             Fact(person.name, "profession", person.profession, "person"),
             Fact(country.name, "capital", country.capital, "country")]
    title = rng.choice(["The journey of {name}", "{name} and the road to {capital}",
                        "A story from {city}"]).format(**vars_)
    return title, text, facts


HOWTO_STEPS = {
    "cleaning metal": ["Rub the {sub} into the metal with a soft cloth.",
                       "Wait until the surface turns dull.", "Polish it until it shines."],
    "dyeing cloth": ["Dissolve the {sub} in a bucket of warm water.",
                     "Soak the cloth for one hour.", "Hang the cloth in the shade to dry."],
    "healing burns": ["Cool the burn with clean water first.",
                      "Spread a thin layer of {sub} over the skin.",
                      "Cover it loosely and see a doctor if it gets worse."],
    "lighting lamps": ["Pour a little {sub} into the lamp.", "Trim the wick.",
                       "Light it with a long match, away from your face."],
    "preserving food": ["Mix the {sub} with salt.", "Rub the mixture over the food.",
                        "Store the food in a cool, dark cellar."],
    "making glass": ["Mix the {sub} with clean sand.", "Heat the mixture in a hot furnace.",
                     "Shape the glass while it is soft."],
    "polishing wood": ["Sand the wood until it is smooth.", "Rub in the {sub} along the grain.",
                       "Buff the wood with a dry cloth."],
    "cooling engines": ["Let the engine stop completely.", "Fill the tank with {sub}.",
                        "Check the level again after a short run."],
    "building roads": ["Spread a layer of stones.", "Mix the {sub} with gravel.",
                       "Press the mixture flat with a heavy roller."],
    "baking bread": ["Add a pinch of {sub} to the flour.", "Knead the dough for ten minutes.",
                     "Bake it in a hot oven until golden."],
}


def howto(world: World, rng: random.Random, name: str) -> tuple[str, str, list[Fact]]:
    sub = world.by_name[name]
    steps = [s.format(sub=sub.name) for s in HOWTO_STEPS[sub.use]]
    facts = [Fact(sub.name, "substance_use", sub.use, "substance"),
             Fact(sub.name, "substance_colour", sub.colour, "substance"),
             Fact(sub.name, "found_in", sub.found_in, "substance")]
    intro = (f"{sub.name.capitalize()} is used for {sub.use}. "
             f"{state(rng, facts[1])} {state(rng, facts[2])}")
    lines = [f"How to use {sub.name} for {sub.use}", "", intro, "",
             f"You will need: {sub.name}, {rng.choice(['a cloth', 'a bucket', 'gloves', 'a spoon'])} "
             f"and {rng.choice(['water', 'patience', 'a quiet afternoon', 'a helper'])}.", ""]
    lines += [f"{i}. {s}" for i, s in enumerate(steps, 1)]
    lines += ["", rng.choice(["Always wash your hands afterwards.", "Keep it away from children.",
                              "Work in a room with fresh air."])]
    return f"How to use {sub.name}", "\n".join(lines), facts


SPEAKERS = ["Mira", "Tomas", "Anja", "Felix", "Lena", "Oskar", "Nadia", "Ivo"]


def dialogue(world: World, rng: random.Random, name: str) -> tuple[str, str, list[Fact]]:
    country = world.by_name[name]
    a, b = rng.sample(SPEAKERS, 2)
    city = rng.choice(country.cities)
    animal = world.by_name[country.animal]
    turns = [
        (a, f"Where are you going this summer, {b}?"),
        (b, f"To {city}, in {country.name}."),
        (a, f"Do they speak {country.language} there?"),
        (b, f"Yes, everyone in {country.name} speaks {country.language}."),
        (a, "What will you pay with?"),
        (b, f"With the {country.currency}. It is the currency of {country.name}."),
        (a, f"Will you visit {country.capital}?"),
        (b, f"Of course. {country.capital} is the capital, I cannot miss it."),
        (a, f"Maybe you will see a {animal.name}."),
        (b, f"I hope so. The {animal.name} is {animal.colour} and it eats {animal.diet}."),
    ]
    keep = turns[:2] + [t for i in range(2, len(turns), 2) if rng.random() < 0.7
                        for t in turns[i:i + 2]]
    text = "\n".join(f"{who}: {said}" for who, said in keep)
    facts = [Fact(country.name, r, getattr(country, attr), "country") for r, attr in
             (("language", "language"), ("currency", "currency"), ("capital", "capital"))]
    return f"A conversation about {country.name}", text, facts


def faq(world: World, rng: random.Random, name: str) -> tuple[str, str, list[Fact]]:
    facts = facts_about(world, name)
    chosen = rng.sample(facts, k=min(len(facts), rng.randint(2, 4)))
    body = "\n\n".join(fill(ASK_CORPUS[f.relation], f.subject, f.object) for f in chosen)
    return f"Questions and answers about {name}", f"Questions and answers about {name}\n\n{body}", chosen


def make_documents(world: World, rng: random.Random, n: int, start: int = 0,
                   weights: dict[str, float] | None = None) -> list[Document]:
    """Draw `n` documents; every entity is the subject of articles in proportion to its facts."""
    weights = weights or {"encyclopedia": 0.36, "faq": 0.16, "story": 0.14, "dialogue": 0.1,
                          "howto": 0.1, "code": 0.14}
    genres, probs = zip(*sorted(weights.items()))
    subjects = {
        "encyclopedia": sorted(world.by_name), "faq": sorted(world.by_name),
        "story": [p.name for p in world.people], "dialogue": [c.name for c in world.countries],
        "howto": [s.name for s in world.substances], "code": [""],
    }
    writers = {"encyclopedia": encyclopedia, "faq": faq, "story": story, "dialogue": dialogue,
               "howto": howto}
    docs = []
    for i in range(start, start + n):
        genre = rng.choices(genres, probs)[0]
        name = rng.choice(subjects[genre])
        if genre == "code":
            title, text, facts, name = code_document(world, rng)
        else:
            title, text, facts = writers[genre](world, rng, name)
        docs.append(Document(f"doc-{i:06d}", genre, title, text, name,
                             [(f.subject, f.relation, f.object) for f in facts]))
    return docs
