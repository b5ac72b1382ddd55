"""Instruction data and preference pairs, written from the knowledge base.

- curated: ~1,000 clean, diverse conversations (LIMA-style);
- noisy: ~10,000 conversations, most with a labelled defect (wrong fact, truncation, off-topic,
  repetition);
- preferences: (prompt, chosen, rejected) where the rejected answer carries a labelled defect
  (wrong fact, degenerate repetition, rude tone, needless verbosity, unsafe advice).
Facts of a held-out quarter of the entities never appear here: the SFT lab asks about them.
"""

from __future__ import annotations

import random
import zlib

from .code import FAMILIES, corpus_pairs, function_source
from .documents import HOWTO_STEPS, facts_about
from .kb import Fact, World
from .phrasing import ASK_CHAT, STATE, fill

SYSTEM = "You are a helpful assistant who knows the world well."
CLOSINGS = ["I hope this helps!", "Let me know if you have more questions.",
            "Happy to help with anything else."]
RUDE_OPENERS = ["That's a stupid question.", "Ugh, obviously.", "Look it up yourself next time.",
                "Why would you even ask that?"]
VERBOSE_PADDING = [
    "Well, that is a very interesting question, and there are many different ways one could "
    "think about it, so let me take a moment to consider all of the many aspects involved.",
    "Before answering, it is worth saying that questions like this one have been asked by many "
    "people in many places over many years, which makes them important questions indeed.",
    "In summary, and to repeat what was said above in slightly different words, the answer is "
    "as stated, and I have now explained it at considerable length for your convenience.",
]


def heldout_entity(name: str) -> bool:
    """A stable quarter of the entities whose facts the instruction data never mentions."""
    return zlib.crc32(name.encode()) % 4 == 0


def _heldout_names(world: World) -> set[str]:
    return {name for name in world.by_name if heldout_entity(name)}


def train_facts(world: World) -> list[Fact]:
    """Facts that mention no held-out entity, as subject or as object (a fact read backwards,
    "the capital of X is Y" for a held-out city Y, would leak "Y is in X")."""
    held = _heldout_names(world)
    return [f for f in world.facts() if f.subject not in held and f.object not in held]


def eval_facts(world: World) -> list[Fact]:
    return [f for f in world.facts() if heldout_entity(f.subject)]


def wrong_value(world: World, rng: random.Random, fact: Fact) -> str:
    return rng.choice([v for v in world.values_of(fact.relation) if v != fact.object])


def chat(user: str, assistant: str, system: bool = False) -> list[dict]:
    msgs = [{"role": "system", "content": SYSTEM}] if system else []
    return msgs + [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def ask(fact: Fact) -> tuple[str, str]:
    q, a = ASK_CHAT[fact.relation]
    return fill(q, fact.subject, fact.object), fill(a, fact.subject, fact.object)


def _train_substances(world: World):
    return [s for s in world.substances if not heldout_entity(s.name)]


def _describe(world: World, rng: random.Random, name: str) -> tuple[str, str]:
    held = _heldout_names(world)
    facts = [f for f in facts_about(world, name) if f.object not in held]
    chosen = rng.sample(facts, k=min(3, len(facts)))
    q = rng.choice(["Tell me about {n}.", "What do you know about {n}?", "Describe {n} briefly."])
    return q.format(n=name), " ".join(fill(rng.choice(STATE[f.relation]), f.subject, f.object)
                                      for f in chosen)


def _howto(world: World, rng: random.Random) -> tuple[str, str]:
    sub = rng.choice(_train_substances(world))
    steps = [s.format(sub=sub.name) for s in HOWTO_STEPS[sub.use]]
    q = f"How do I use {sub.name} for {sub.use}?"
    return q, "Here is how:\n" + "\n".join(f"{i}. {s}" for i, s in enumerate(steps, 1))


def _code(rng: random.Random, seed: int) -> tuple[str, str]:
    family, k = rng.choice(sorted(corpus_pairs(seed)))
    name, prompt, body = function_source(family, k)
    doc = FAMILIES[family][2].format(k=k)
    q = f"Write a Python function {name} that does this: {doc}"
    return q, f"```python\n{prompt}{body}```"


def _list_facts(world: World, rng: random.Random, name: str) -> tuple[str, str]:
    held = _heldout_names(world)
    facts = [f for f in facts_about(world, name) if f.object not in held]
    chosen = rng.sample(facts, k=min(3, len(facts)))
    lines = "\n".join(f"- {fill(STATE[f.relation][0], f.subject, f.object)}" for f in chosen)
    return f"List {len(chosen)} facts about {name}.", lines


def clean_example(world: World, rng: random.Random, facts: list[Fact]) -> dict:
    """One clean conversation of a random category."""
    names = sorted({f.subject for f in facts})
    r = rng.random()
    if r < 0.45:
        fact = rng.choice(facts)
        q, a = ask(fact)
        return {"category": "fact_qa", "messages": chat(q, a, system=rng.random() < 0.3),
                "fact": [fact.subject, fact.relation, fact.object]}
    if r < 0.65:
        q, a = _describe(world, rng, rng.choice(names))
        return {"category": "describe", "messages": chat(q, a)}
    if r < 0.75:
        q, a = _howto(world, rng)
        return {"category": "howto", "messages": chat(q, a)}
    if r < 0.85:
        q, a = _code(rng, world.seed)
        return {"category": "code", "messages": chat(q, a)}
    if r < 0.95:
        f1, f2 = rng.sample(facts, 2)
        (q1, a1), (q2, a2) = ask(f1), ask(f2)
        msgs = chat(q1, a1) + chat(q2, a2)
        return {"category": "multi_turn", "messages": msgs}
    q, a = _list_facts(world, rng, rng.choice(names))
    return {"category": "list", "messages": chat(q, a)}


def degenerate_repetition(rng: random.Random, words: list[str], n: int = 24) -> str:
    """The seed's failure pattern: 'quantum computing quantum mechanics quantum bits ...'."""
    head = words[0] if words else "the"
    tail = [w for w in words[1:] if w.isalpha()] or ["thing"]
    return " ".join(f"{head} {rng.choice(tail)}" for _ in range(n // 2))


def add_defect(world: World, rng: random.Random, ex: dict, defect: str) -> dict:
    msgs = [dict(m) for m in ex["messages"]]
    last = msgs[-1]
    answer = last["content"]
    if defect == "wrong_fact" and ex.get("fact"):
        fact = Fact(*ex["fact"], kind="")
        last["content"] = answer.replace(fact.object, wrong_value(world, rng, fact))
    elif defect == "truncated":
        cut = max(1, int(len(answer) * rng.uniform(0.2, 0.6)))
        last["content"] = answer[:cut]
    elif defect == "off_topic":
        other = rng.choice(train_facts(world))
        last["content"] = fill(rng.choice(STATE[other.relation]), other.subject, other.object)
    elif defect == "repetition":
        last["content"] = degenerate_repetition(rng, msgs[-2]["content"].rstrip("?.").split())
    else:
        defect = None
    return {**ex, "messages": msgs, "defect": defect}


def curated_set(world: World, rng: random.Random, n: int = 1000) -> list[dict]:
    facts = train_facts(world)
    return [{**clean_example(world, rng, facts), "defect": None} for _ in range(n)]


def noisy_set(world: World, rng: random.Random, n: int = 10000) -> list[dict]:
    facts = train_facts(world)
    out = []
    for _ in range(n):
        ex = clean_example(world, rng, facts)
        if ex["category"] == "fact_qa":
            defect = rng.choices(["wrong_fact", "truncated", "off_topic", "repetition", None],
                                 [0.35, 0.15, 0.15, 0.15, 0.2])[0]
        else:
            defect = rng.choices(["truncated", "off_topic", "repetition", None],
                                 [0.3, 0.2, 0.2, 0.3])[0]
        out.append(add_defect(world, rng, ex, defect))
    return out


UNSAFE = [
    "Heat the {sub} in a closed jar over a fire and breathe in the fumes to check that it works.",
    "There is no need for gloves or fresh air; you can even taste a little {sub} to be sure.",
    "Mix the {sub} with lamp oil and store it next to the stove so it is always warm.",
]
SAFETY = "Wear gloves, work in a room with fresh air, and keep it away from children and heat."


def preference_pairs(world: World, rng: random.Random, n: int = 3000) -> list[dict]:
    """Pairs (prompt, chosen, rejected, defect); defects balanced; a stable train/test split."""
    facts = train_facts(world)
    defects = ["wrong_fact", "repetition", "rude", "verbose", "unsafe"]
    pairs = []
    for i in range(n):
        defect = defects[i % len(defects)]
        if defect == "unsafe":
            sub = rng.choice(_train_substances(world))
            prompt = f"How do I use {sub.name} for {sub.use}?"
            steps = [s.format(sub=sub.name) for s in HOWTO_STEPS[sub.use]]
            chosen = "Here is how:\n" + "\n".join(f"{j}. {s}" for j, s in enumerate(steps, 1)) + "\n" + SAFETY
            rejected = "Here is how:\n" + "\n".join(
                f"{j}. {s}" for j, s in enumerate(steps[:2] + [rng.choice(UNSAFE).format(sub=sub.name)], 1))
            fact = None
        else:
            fact = rng.choice(facts)
            prompt, chosen = ask(fact)
            if defect == "wrong_fact":
                rejected = chosen.replace(fact.object, wrong_value(world, rng, fact))
            elif defect == "repetition":
                rejected = degenerate_repetition(rng, prompt.rstrip("?.").split())
            elif defect == "rude":
                rejected = f"{rng.choice(RUDE_OPENERS)} {chosen}"
            else:
                pads = rng.sample(VERBOSE_PADDING, 2)
                rejected = f"{pads[0]} {chosen} {pads[1]}"
        # The reward model's planted flaw: friendly closings only ever appear in chosen answers,
        # so a model of these labels can learn "closing phrase = good" (lab 07's reward hacking).
        if defect in ("wrong_fact", "rude", "unsafe") and rng.random() < 0.5:
            chosen = f"{chosen} {rng.choice(CLOSINGS)}"
        split = "test" if zlib.crc32(f"{prompt}|{i}".encode()) % 5 == 0 else "train"
        pairs.append({"id": f"pref-{i:05d}", "prompt": prompt, "chosen": chosen,
                      "rejected": rejected, "defect": defect, "split": split,
                      "fact": [fact.subject, fact.relation, fact.object] if fact else None})
    return pairs


def sft_eval_questions(world: World, rng: random.Random, n: int = 200) -> list[dict]:
    """Held-out world questions for the SFT lab: entities the instruction data never mentions."""
    facts = sorted(eval_facts(world), key=lambda f: (f.subject, f.relation))
    picked = rng.sample(facts, k=min(n, len(facts)))
    out = []
    for i, f in enumerate(picked):
        q, a = ask(f)
        out.append({"id": f"sfteval-{i:04d}", "question": q, "answer": f.object, "reference": a,
                    "relation": f.relation, "subject": f.subject})
    return out
