"""How `mf` scores eight kinds of chat request for one pair: writing, role-play, reasoning, math,
coding, extraction, STEM and humanities, eight requests each, written for this bench rather than
taken from a benchmark (open-chat benchmarks such as MT-Bench are kept for evaluation, so the
bench does not look at their questions). They carry no labels: on open chat, GPT-4-class models
are known to lead Mixtral-class ones most on math, coding, extraction and reasoning, least on
writing and role-play.

Prints each kind's mean margin in logits, split into the latent model's part and the
neighbour step's, highest first:

    python bench/request_kinds.py                                   # the default pair
    python bench/request_kinds.py --strong gpt-4o --weak Meta-Llama-3.1-8B-Instruct
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from routers.mf.router import MFRouter
from routers.model_names import DEFAULT_PAIR, match_model
from routers.registry import CHECKPOINT_ROOT

REQUESTS: dict[str, list[str]] = {
    "writing": [
        "Write a short welcome letter for new volunteers joining a community garden, mentioning what to bring on the first day.",
        "Draft a product description for a reusable water bottle that keeps drinks cold for 24 hours. Keep it under 100 words.",
        "Write a limerick about a cat who refuses to get off a laptop keyboard.",
        "Compose a heartfelt thank-you note to a teacher who helped you through a difficult school year.",
        "Write the opening paragraph of a mystery novel set on a night train across Europe.",
        "Write a LinkedIn post announcing that our small bakery is opening a second location.",
        "Write a bedtime story for a five-year-old about a turtle who wants to fly.",
        "Rewrite this to sound more formal: hey, we can't make the meeting tomorrow, can we move it to friday?",
    ],
    "role-play": [
        "You are a grumpy lighthouse keeper. A tourist asks why you never leave the island. Answer in character.",
        "Act as my personal running coach. I want to run my first 10k in three months; talk me through the plan.",
        "Pretend you are a barista at a busy café and a customer is upset that their order is wrong. Respond to them.",
        "Play the role of a job interviewer for a junior marketing position and ask me your first three questions.",
        "You are Sherlock Holmes. Tell me what you deduce about a visitor who arrives with muddy boots and a sunburnt neck.",
        "Imagine you are a tour guide in ancient Rome, showing visitors the Colosseum on its opening day.",
        "Act as a support agent for an internet provider and help me with a connection that keeps dropping.",
        "You are a wise old dragon guarding a treasure. A young adventurer asks you for a single coin. What do you say?",
    ],
    "reasoning": [
        "Anna is taller than Ben and Ben is taller than Carl. Is Carl taller than Anna? Explain.",
        "If all bloops are razzies and all razzies are lazzies, are all bloops definitely lazzies? Why?",
        "A shop opens every day except Mondays and public holidays. Today is Sunday and not a holiday; tomorrow is a "
        "holiday. Is the shop open today, and tomorrow?",
        "Five friends sit in a row. Maya sits at one end, Leo sits next to Maya and Priya sits in the middle. "
        "Who can be at the other end, if the other two friends are Sam and Ava?",
        "If the day after tomorrow is a Friday, what day was the day before yesterday?",
        "Lena finished a race ahead of Omar but behind Jo, and Kim finished ahead of Jo. Who came last of the four?",
        "Every time it rains, the street gets wet. The street is wet this morning. Does that mean it rained? Explain.",
        "A meeting needs Ravi or Sofia but not both, and Sofia only comes if Tim comes. Tim is away this week. Who "
        "comes to the meeting, and why?",
    ],
    "math": [
        "What is the sum of the interior angles of a hexagon?",
        "Solve for x: 2x^2 - 8x + 6 = 0.",
        "A shirt costs $40 after a 20% discount. What was its original price?",
        "What is the least common multiple of 12, 18 and 30?",
        "Compute the derivative of g(x) = x^2 ln(x).",
        "A bag holds 5 red and 3 blue marbles. Two are drawn without replacement. What is the probability that both are red?",
        "The sum of three consecutive even integers is 78. What are the integers?",
        "A car travels 150 km in 2.5 hours and then 90 km in 1.5 hours. What is its average speed over the whole trip?",
    ],
    "coding": [
        "Write a Python function that checks whether a string is a valid IPv4 address.",
        "Write a SQL query that returns the three customers with the highest total order value (tables customers, orders).",
        "Implement a stack in Java with push, pop and getMin, each in O(1) time.",
        "Write a bash script that renames every .jpeg file in a directory to .jpg.",
        "Why does changing one cell change every row here?\n\nrows = [[0] * 3] * 3\nrows[0][0] = 1\nprint(rows)",
        "Write a JavaScript function that debounces another function by a given number of milliseconds.",
        "Implement binary search over a sorted slice in Rust, returning the index as an Option.",
        "Write a Python class for an LRU cache whose get and put run in O(1).",
    ],
    "extraction": [
        "Extract the meeting date, time and room from this email as JSON.\nHi team, let's meet on Thursday 14 March at 10:30 "
        "in room B204 to review the budget. Thanks, Omar",
        "List every price in this text with the item it belongs to.\nThe café sells espresso for $2.50, a croissant for $3.10 "
        "and a sandwich for $7.95; tea is $2.20.",
        "List the people named below and their job titles, one per line.\nAt the launch, engineer Lena Fischer showed the "
        "prototype, marketing director Raj Patel took questions and chief executive Tom Baker closed the event.",
        "Classify each review as positive, negative or neutral and return a JSON list.\n1. The battery lasts all day, love it."
        "\n2. It broke after a week.\n3. It does what it says.",
        "Extract the ingredients and their quantities from this recipe as a table.\nMix 200 g flour, 2 eggs and 300 ml milk; "
        "add a pinch of salt and 1 tbsp of melted butter.",
        "Which IP addresses below got a 500 error?\n10.0.0.5 GET /home 200\n10.0.0.9 POST /login 500\n10.0.0.7 GET /api 500"
        "\n10.0.0.5 GET /img 404",
        "Turn the dates in this paragraph into a timeline.\nThe company was founded in 1998, went public in 2004, bought its "
        "main rival in 2011 and moved its headquarters to Dublin in 2019.",
        "Name the cities in this text and the country of each, as JSON.\nOur tour starts in Porto, goes on to Seville and "
        "Lyon, and ends in Turin.",
    ],
    "STEM": [
        "Why is the sky blue during the day but red at sunset?",
        "Explain how a transistor works as a switch.",
        "What is the difference between mitosis and meiosis?",
        "How does GPS work out where you are on Earth?",
        "Explain what entropy means in thermodynamics, with an everyday example.",
        "Why do antibiotics not work against viral infections?",
        "What causes the seasons on Earth?",
        "Explain how public-key cryptography lets two strangers communicate securely.",
    ],
    "humanities": [
        "What were the main consequences of the printing press for European society?",
        "Explain the difference between a parliamentary and a presidential system of government.",
        "How did the Silk Road shape the exchange of ideas between East and West?",
        "What is utilitarianism, and what is one common criticism of it?",
        "Discuss the place of the Harlem Renaissance in American culture.",
        "Why did the Roman Republic become an empire?",
        "Explain supply and demand to a high-school student with an example from the housing market.",
        "What does Kant mean by the categorical imperative?",
    ],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint-dir", type=Path, default=CHECKPOINT_ROOT, help="directory holding mf/")
    parser.add_argument("--strong", default=DEFAULT_PAIR[0])
    parser.add_argument("--weak", default=DEFAULT_PAIR[1])
    args = parser.parse_args()
    router = MFRouter(args.checkpoint_dir / "mf", "cpu", args.strong, args.weak)
    strong, weak = (match_model(name, router.models) for name in (args.strong, args.weak))
    assert strong and weak, "MFRouter refuses a model it does not know"
    pair = [strong, weak]
    rows = []
    for kind, requests in REQUESTS.items():
        latent = router.model_logits(requests, pair) @ np.array([1.0, -1.0])
        total = np.array([math.log(p / (1.0 - p)) for p in router.score(requests)])
        rows.append((kind, float(latent.mean()), float((total - latent).mean()), float(total.mean())))
    print(f"mf scoring {pair[0]} vs {pair[1]}: mean margin (logits) per kind of request")
    print(f"{'kind':<12}{'latent':>8}{'neighbour':>11}{'total':>8}")
    for kind, latent_part, neighbour_part, total_part in sorted(rows, key=lambda row: -row[3]):
        print(f"{kind:<12}{latent_part:>+8.2f}{neighbour_part:>+11.2f}{total_part:>+8.2f}")


if __name__ == "__main__":
    main()
