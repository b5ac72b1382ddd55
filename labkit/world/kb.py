"""The knowledge base of the invented world: entities, their attributes and the facts they make.

Every fact is a (subject, relation, object) triple. Documents, instructions, preference pairs
and benchmark questions are all written from these triples, so a model that reads the corpus can
learn the facts and a benchmark can test them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from .names import NameMaker

REGIONS = ["the Northern Reach", "the Amber Coast", "the Low Marches", "the Glass Steppe",
           "the Southern Isles"]
COLOURS = ["red", "blue", "green", "yellow", "white", "black", "orange", "purple", "grey", "silver"]
DIETS = ["grass", "fish", "insects", "fruit", "seeds", "roots", "small birds", "leaves"]
STATES = ["a powder", "a liquid", "a crystal", "a gas", "a soft metal", "a paste"]
USES = ["cleaning metal", "dyeing cloth", "healing burns", "lighting lamps", "preserving food",
        "making glass", "polishing wood", "cooling engines", "building roads", "baking bread"]
PURPOSES = ["measuring the wind", "weaving rope", "lifting water", "keeping time", "printing maps",
            "reading the stars", "grinding grain", "sending signals", "cooling houses",
            "drying fish"]
PROFESSIONS = ["inventor", "painter", "explorer", "poet", "doctor", "engineer", "astronomer",
               "merchant", "composer", "mapmaker"]
CLIMATES = ["mild", "cold", "dry", "rainy", "windy", "warm"]
INDUSTRIES = ["fishing", "farming", "weaving", "mining", "shipbuilding", "trade", "glassmaking",
              "pottery"]
SIZES = ["tiny", "small", "medium-sized", "large", "huge"]


@dataclass
class Country:
    name: str
    capital: str = ""
    language: str = ""
    currency: str = ""
    region: str = ""
    animal: str = ""  # the national animal
    climate: str = ""
    industry: str = ""
    population: int = 0  # millions
    founded: int = 0
    cities: list[str] = field(default_factory=list)


@dataclass
class City:
    name: str
    country: str
    river: str
    population: int  # thousands
    known_for: str  # a substance or an invention made there


@dataclass
class Person:
    name: str
    birthplace: str  # a city
    profession: str
    born: int


@dataclass
class Animal:
    name: str
    colour: str
    diet: str
    home: str  # a country
    size: str


@dataclass
class Substance:
    name: str
    colour: str
    state: str
    use: str
    found_in: str  # a country


@dataclass
class Invention:
    name: str
    inventor: str  # a person
    year: int
    purpose: str


@dataclass(frozen=True)
class Fact:
    subject: str
    relation: str
    object: str
    kind: str  # the subject's kind: country, city, person, animal, substance, invention


# relation -> (subject kind, benchmark subject): the facts that benchmarks ask about.
RELATIONS = {
    "capital": ("country", "geography"),
    "language": ("country", "culture"),
    "currency": ("country", "economics"),
    "region": ("country", "geography"),
    "national_animal": ("country", "biology"),
    "country_of_city": ("city", "geography"),
    "river": ("city", "geography"),
    "birthplace": ("person", "history"),
    "profession": ("person", "history"),
    "animal_colour": ("animal", "biology"),
    "diet": ("animal", "biology"),
    "animal_home": ("animal", "biology"),
    "substance_colour": ("substance", "chemistry"),
    "substance_use": ("substance", "chemistry"),
    "substance_state": ("substance", "chemistry"),
    "found_in": ("substance", "chemistry"),
    "inventor": ("invention", "technology"),
    "purpose": ("invention", "technology"),
}


@dataclass
class World:
    seed: int
    countries: list[Country]
    cities: list[City]
    people: list[Person]
    animals: list[Animal]
    substances: list[Substance]
    inventions: list[Invention]
    languages: list[str]
    currencies: list[str]
    rivers: list[str]

    def __post_init__(self):
        self.by_name = {}
        for group in (self.countries, self.cities, self.people, self.animals, self.substances,
                      self.inventions):
            for entity in group:
                self.by_name[entity.name] = entity

    @property
    def n_entities(self) -> int:
        return len(self.by_name)

    def facts(self) -> list[Fact]:
        out = []
        for c in self.countries:
            out += [Fact(c.name, "capital", c.capital, "country"),
                    Fact(c.name, "language", c.language, "country"),
                    Fact(c.name, "currency", c.currency, "country"),
                    Fact(c.name, "region", c.region, "country"),
                    Fact(c.name, "national_animal", c.animal, "country")]
        for t in self.cities:
            out += [Fact(t.name, "country_of_city", t.country, "city"),
                    Fact(t.name, "river", t.river, "city")]
        for p in self.people:
            out += [Fact(p.name, "birthplace", p.birthplace, "person"),
                    Fact(p.name, "profession", p.profession, "person")]
        for a in self.animals:
            out += [Fact(a.name, "animal_colour", a.colour, "animal"),
                    Fact(a.name, "diet", a.diet, "animal"),
                    Fact(a.name, "animal_home", a.home, "animal")]
        for s in self.substances:
            out += [Fact(s.name, "substance_colour", s.colour, "substance"),
                    Fact(s.name, "substance_use", s.use, "substance"),
                    Fact(s.name, "substance_state", s.state, "substance"),
                    Fact(s.name, "found_in", s.found_in, "substance")]
        for i in self.inventions:
            out += [Fact(i.name, "inventor", i.inventor, "invention"),
                    Fact(i.name, "purpose", i.purpose, "invention")]
        return out

    def values_of(self, relation: str) -> list[str]:
        """Every value a relation takes in this world (distractors for multiple choice)."""
        return sorted({f.object for f in self.facts() if f.relation == relation})


def make_world(seed: int = 7, n_countries: int = 30, cities_per_country: int = 3,
               n_people: int = 60, n_animals: int = 36, n_substances: int = 30,
               n_inventions: int = 36) -> World:
    """Draw a consistent world: every reference points at an entity that exists."""
    rng = random.Random(seed)
    names = NameMaker(seed)
    languages = names.many("language", 10)
    currencies = names.many("currency", 12, capital=False)
    rivers = names.many("river", 40)
    countries = [Country(name=n) for n in names.many("country", n_countries)]
    animals_names = names.many("animal", n_animals, capital=False)
    cities: list[City] = []
    for c in countries:
        c.language = rng.choice(languages)
        c.currency = rng.choice(currencies)
        c.region = rng.choice(REGIONS)
        c.climate = rng.choice(CLIMATES)
        c.industry = rng.choice(INDUSTRIES)
        c.population = rng.randint(1, 90)
        c.founded = rng.randint(900, 1890)
        for _ in range(cities_per_country):
            city = City(name=names.make("city"), country=c.name, river=rng.choice(rivers),
                        population=rng.randint(20, 2000), known_for="")
            cities.append(city)
            c.cities.append(city.name)
        c.capital = c.cities[0]
    for c, a in zip(countries, rng.sample(animals_names, len(countries))):
        c.animal = a
    animals = [Animal(name=a, colour=rng.choice(COLOURS), diet=rng.choice(DIETS),
                      home=rng.choice(countries).name, size=rng.choice(SIZES))
               for a in animals_names]
    # National animals live at home: keep the two relations consistent.
    by_animal = {c.animal: c.name for c in countries}
    for a in animals:
        if a.name in by_animal:
            a.home = by_animal[a.name]
    people = []
    for _ in range(n_people):
        first, last = names.make("person_first"), names.make("person_last")
        people.append(Person(name=f"{first} {last}", birthplace=rng.choice(cities).name,
                             profession=rng.choice(PROFESSIONS), born=rng.randint(1500, 1950)))
    substances = [Substance(name=n, colour=rng.choice(COLOURS), state=rng.choice(STATES),
                            use=rng.choice(USES), found_in=rng.choice(countries).name)
                  for n in names.many("substance", n_substances, capital=False)]
    inventors = [p for p in people if p.profession in ("inventor", "engineer")] or people
    inventions = []
    for n in names.many("invention", n_inventions, capital=False):
        person = rng.choice(inventors)
        inventions.append(Invention(name=n, inventor=person.name,
                                    year=person.born + rng.randint(20, 50),
                                    purpose=rng.choice(PURPOSES)))
    for city in cities:
        city.known_for = rng.choice([s.name for s in substances] + [i.name for i in inventions])
    return World(seed, countries, cities, people, animals, substances, inventions,
                 languages, currencies, rivers)
