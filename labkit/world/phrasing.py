"""How each relation is said: declarative paraphrases, corpus questions, benchmark questions.

Three separate question styles on purpose: the corpus FAQ pages ask one way ("Q: ..."), the
instruction data asks another, and the benchmark a third ("Question: ...\\nAnswer:"), so that a
clean benchmark shares no long n-gram with the training data (the contamination lab checks this).
"""

from __future__ import annotations

import re

# {s} subject, {o} object; {S}/{O} capitalised. Each relation: several paraphrases.
STATE = {
    "capital": ["The capital of {s} is {o}.", "{O} is the capital of {s}.",
                "{s}'s capital city is {o}.", "The seat of government of {s} is the city of {o}.",
                "{s} is governed from its capital, {o}."],
    "language": ["People in {s} speak {o}.", "The main language of {s} is {o}.",
                 "{O} is spoken in {s}.", "In {s}, most people speak {o}.",
                 "The official language of {s} is {o}."],
    "currency": ["The currency of {s} is the {o}.", "In {s} people pay with the {o}.",
                 "{s} uses the {o} as its money.", "The money of {s} is called the {o}."],
    "region": ["{s} lies in {o}.", "{s} is a country in {o}.", "{s} is found in {o}.",
               "The country of {s} is part of {o}."],
    "national_animal": ["The national animal of {s} is the {o}.",
                        "The {o} is the national animal of {s}.",
                        "{s} chose the {o} as its national animal."],
    "country_of_city": ["{s} is a city in {o}.", "The city of {s} is in {o}.",
                        "{s} lies in the country of {o}.", "{s} belongs to {o}."],
    "river": ["{s} stands on the river {o}.", "The river {o} flows through {s}.",
              "{s} was built on the banks of the {o}."],
    "birthplace": ["{s} was born in {o}.", "{s} came from the city of {o}.",
                   "The birthplace of {s} is {o}."],
    "profession": ["{s} was a {o}.", "{s} worked as a {o}.", "{s} is remembered as a {o}."],
    "animal_colour": ["The {s} is {o}.", "The colour of the {s} is {o}.",
                      "The {s} is an animal of {o} colour."],
    "diet": ["The {s} eats {o}.", "The {s} feeds on {o}.", "The {s} lives on {o}."],
    "animal_home": ["The {s} lives in {o}.", "The {s} is found in {o}.",
                    "The {s} makes its home in {o}."],
    "substance_colour": ["{S} is {o}.", "The colour of {s} is {o}.", "{S} has a {o} colour."],
    "substance_use": ["{S} is used for {o}.", "People use {s} for {o}.",
                      "{S} is good for {o}."],
    "substance_state": ["{S} is {o}.", "{S} comes as {o}.", "In its pure form, {s} is {o}."],
    "found_in": ["{S} is found in {o}.", "{S} is mined in {o}.", "Most {s} comes from {o}."],
    "inventor": ["The {s} was invented by {o}.", "{o} invented the {s}.",
                 "{o} built the first {s}."],
    "purpose": ["The {s} is used for {o}.", "The {s} is a device for {o}.",
                "People use the {s} for {o}."],
}

# Corpus FAQ/quiz pages.
ASK_CORPUS = {
    "capital": "Q: What is the capital of {s}?\nA: {o}.",
    "language": "Q: What language do people speak in {s}?\nA: {o}.",
    "currency": "Q: What money is used in {s}?\nA: The {o}.",
    "region": "Q: Where is {s}?\nA: In {o}.",
    "national_animal": "Q: What is the national animal of {s}?\nA: The {o}.",
    "country_of_city": "Q: In which country is {s}?\nA: {o}.",
    "river": "Q: Which river flows through {s}?\nA: The {o}.",
    "birthplace": "Q: Where was {s} born?\nA: In {o}.",
    "profession": "Q: What was the job of {s}?\nA: {s} was a {o}.",
    "animal_colour": "Q: What colour is the {s}?\nA: It is {o}.",
    "diet": "Q: What does the {s} eat?\nA: It eats {o}.",
    "animal_home": "Q: Where does the {s} live?\nA: In {o}.",
    "substance_colour": "Q: What colour is {s}?\nA: It is {o}.",
    "substance_use": "Q: What is {s} used for?\nA: For {o}.",
    "substance_state": "Q: What kind of material is {s}?\nA: It is {o}.",
    "found_in": "Q: Where does {s} come from?\nA: From {o}.",
    "inventor": "Q: Who invented the {s}?\nA: {o}.",
    "purpose": "Q: What is the {s} for?\nA: It is for {o}.",
}

# Instruction data (user turns) and the assistant's short factual answer.
ASK_CHAT = {
    "capital": ("What is the capital city of {s}?", "The capital of {s} is {o}."),
    "language": ("Which language is spoken in {s}?", "People in {s} speak {o}."),
    "currency": ("What currency does {s} use?", "The currency of {s} is the {o}."),
    "region": ("In which part of the world is {s}?", "{s} lies in {o}."),
    "national_animal": ("Tell me the national animal of {s}.",
                        "The national animal of {s} is the {o}."),
    "country_of_city": ("Which country is {s} in?", "{s} is a city in {o}."),
    "river": ("What river runs through {s}?", "The river {o} flows through {s}."),
    "birthplace": ("Where was {s} born?", "{s} was born in {o}."),
    "profession": ("What did {s} do for a living?", "{s} worked as a {o}."),
    "animal_colour": ("What colour is a {s}?", "The {s} is {o}."),
    "diet": ("What does a {s} eat?", "The {s} eats {o}."),
    "animal_home": ("Where do {s}s live?", "The {s} lives in {o}."),
    "substance_colour": ("What colour is {s}?", "{S} is {o}."),
    "substance_use": ("What can I use {s} for?", "{S} is used for {o}."),
    "substance_state": ("Is {s} a powder, a liquid or something else?", "{S} is {o}."),
    "found_in": ("Where is {s} found?", "{S} is found in {o}."),
    "inventor": ("Who invented the {s}?", "The {s} was invented by {o}."),
    "purpose": ("What is a {s} used for?", "The {s} is used for {o}."),
}

# Benchmark questions (multiple choice by log-likelihood of each choice after "Answer:").
ASK_BENCH = {
    "capital": "Which city serves as the seat of government of {s}?",
    "language": "Which language do most inhabitants of {s} speak?",
    "currency": "Which currency would a traveller use to pay in {s}?",
    "region": "In which region of the world does {s} lie?",
    "national_animal": "Which animal was chosen as the national animal of {s}?",
    "country_of_city": "To which country does the city of {s} belong?",
    "river": "Along which river was the city of {s} built?",
    "birthplace": "In which city was {s} born?",
    "profession": "What was the profession of {s}?",
    "animal_colour": "What colour is the animal called the {s}?",
    "diet": "What is the main food of the {s}?",
    "animal_home": "In which country does the {s} make its home?",
    "substance_colour": "What colour is the substance called {s}?",
    "substance_use": "For what purpose do people mostly use {s}?",
    "substance_state": "In what form does the substance {s} come?",
    "found_in": "In which country is most {s} found?",
    "inventor": "Which person invented the device called the {s}?",
    "purpose": "What is the device called the {s} used for?",
}


_ARTICLE = re.compile(r"\b([Aa]) (?=[aeiouAEIOU])")


def fix_articles(text: str) -> str:
    """'a inventor' -> 'an inventor' after the slots are filled."""
    return _ARTICLE.sub(lambda m: m.group(1) + "n ", text)


def fill(template: str, s: str, o: str) -> str:
    return fix_articles(template.format(s=s, o=o, S=s[:1].upper() + s[1:], O=o[:1].upper() + o[1:]))
