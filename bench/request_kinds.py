"""How `mf` scores eight kinds of chat request for one pair: writing, role-play, reasoning, math,
coding, extraction, STEM and humanities, eight hand-written requests each in the style of
MT-Bench's categories (no labels: on open chat, GPT-4-class models lead Mixtral-class ones
most on math, coding, extraction and reasoning, least on writing and role-play).

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
        "Compose an engaging travel blog post about a recent trip to Hawaii, highlighting cultural "
        "experiences and must-see attractions.",
        "Draft a professional email seeking your supervisor's feedback on the 'Quarterly Financial "
        "Report' you prepared. Keep it short.",
        "Write a persuasive essay to convince your introverted friend to volunteer as a guest speaker at a local event.",
        "Describe a vivid and unique character, using strong imagery and creative language. Please "
        "answer in fewer than two paragraphs.",
        "Write a descriptive paragraph about a bustling marketplace, with the smells, sounds and colours of the place.",
        "Write a short story that begins with: The old abandoned house at the end of the street held a "
        "secret no one had discovered.",
        "Help me write a wedding toast for my best friend who is marrying her college sweetheart.",
        "Write a haiku sequence about autumn in the city.",
    ],
    "role-play": [
        "Pretend to be Elon Musk in all the following conversations and speak like him. Why do we need to go to Mars?",
        "Embrace the role of Sheldon from The Big Bang Theory as we delve into our conversation. What "
        "is your opinion on hand dryers?",
        "Imagine yourself as a doctor devising innovative remedies. Start with a patient who has intense abdominal discomfort.",
        "Please take on the role of a relationship coach. I'll describe two people in conflict, and you "
        "suggest ways to resolve it.",
        "Now you are a machine learning engineer. Explain what a language model is to a customer without a technical background.",
        "You are a pirate captain. Give a rousing speech to your crew before a storm.",
        "Act as a travel agent and recommend a 5-day itinerary for Japan for a family with kids.",
        "Role-play as a medieval knight explaining to a peasant why he must pay taxes.",
    ],
    "reasoning": [
        "You are in a race and have just overtaken the second person. What's your current position? "
        "Where is the person you overtook?",
        "Thomas is very healthy, but he has to go to the hospital every day. What could be the reasons?",
        "David has three sisters. Each of them has one brother. How many brothers does David have?",
        "Oranges cost more than apples. Oranges cost less than bananas. Bananas cost more than apples and bananas cost more than "
        "oranges. If the first two statements are true, is the third true, false, or uncertain?",
        "A is the father of B. B is the father of C. What is the relationship between A and C?",
        "Which word does not belong with the others? tyre, steering wheel, car, engine",
        "One morning after sunrise, Suresh stood facing a pole. The shadow of the pole fell exactly to his right. "
        "Which direction was the shadow pointing: east, south, west, or north? Explain your reasoning.",
        "A train leaves at 3pm at 60 mph and another leaves the same station at 4pm at 80 mph in the same direction. "
        "When does the second catch up?",
    ],
    "math": [
        "The vertices of a triangle are at points (0, 0), (-1, 1), and (3, 3). What is the area of the triangle?",
        "A startup invests $8000 in software development in the first year, then half of that in the second. What's the total?",
        "When rolling two dice, what is the probability that you roll a total number that is at least 3?",
        "Given that f(x) = 4x^3 - 9x - 14, find the value of f(2).",
        "Find x such that 3x + 10 = 5(x - 2).",
        "How many integers are in the solution of the inequality |x + 5| < 10?",
        "When a number is divided by 10, the remainder is 4. What is the remainder when twice the number is divided by 4?",
        "Some people got on a bus at the terminal. At the first stop, half of them got off and 4 more got on. "
        "At the second stop, 6 got off and 8 more got on. 25 people headed to the third stop. How many got on at the terminal?",
    ],
    "coding": [
        "Develop a Python program that reads all the text files under a directory and returns the top-5 most frequent words.",
        "Write a C++ program to find the nth Fibonacci number using recursion.",
        "Write a simple website in HTML. When a user clicks the button, it shows a random joke from a list of 4 jokes.",
        "Can you identify any bug in this function?\n\ndef lcs_length(a, b):\n    m, n = len(a), len(b)\n"
        "    dp = [[0] * (n + 1) for _ in range(m + 1)]\n    for i in range(1, m + 1):\n        for j in range(1, n + 1):\n"
        "            if a[i - 1] == b[j - 1]:\n                dp[i][j] = dp[i - 1][j - 1] + 1\n            else:\n"
        "                dp[i][j] = max(dp[i - 1][j], dp[i][j - 1])\n    return dp[m][n]",
        "Write a function to find the highest common ancestor (not LCA) of two nodes in a binary tree.",
        "Implement a function to find the median of two sorted arrays of different sizes with O(1) space and O(n) time.",
        "Write a function to find the majority element in a given integer array using the Boyer-Moore Voting Algorithm.",
        "Implement a program to find the common elements in two arrays without using any extra data structures.",
    ],
    "extraction": [
        "Extract the book, author, main character and year of publication from these texts, one book per line as "
        "\"main character, book, author, year\".\na) J.K. Rowling's 'Harry Potter and the Philosopher's Stone', published in "
        "1997, tells the story of Harry.\nb) In J.R.R. Tolkien's 'The Fellowship of the Ring', published in 1954, we meet Frodo.",
        "Which company had the highest profit in 2021, and who is its CEO?\na) Company X, CEO Amy Williams, $30 billion revenue, "
        "$3 billion profit.\nb) Company Y, CEO Mark Thompson, $60 billion revenue, $6 billion profit.\nc) Company Z, CEO Sarah "
        "Johnson, $20 billion revenue, $7 billion profit.",
        "Identify the countries, their capitals and the languages spoken in these sentences, as JSON.\na) Copenhagen, Denmark's "
        "capital, captivates visitors with its art scene and the Danish language.\nb) Buenos Aires, the capital of Argentina, is "
        "a bustling metropolis where Spanish is spoken.",
        'Count how many times the words "Amazon", "river" and "you" appear below, one "word, count" per line.\nThe Amazon is '
        "home to the legendary Amazon River. As you venture further, you will discover the Amazon river's wonders.",
        "List the named entities (people, organizations, locations) in this article as a JSON dictionary of three groups.\n"
        "Adamson Emerson, the CEO of Faraday, and Dieter Zetsche, the CEO of Daimler AG, announced a new Gigafactory in Berlin.",
        "Assign each question to Literature, History, Science or Art: 1. Themes of Tolstoy's 'War and Peace'. 2. US strategy in "
        "World War II. 3. The Lewis structure of water. 4. Leonardo da Vinci's techniques in the 'Mona Lisa'.",
        "Rate these movie reviews from 1 (very negative) to 5 (very positive) and return a JSON array.\n1. Phenomenal.\n"
        "2. Never have I been so disappointed with a movie.\n3. The movie was okay, some parts lackluster.",
        "Extract all unique variable names from each equation, as a JSON string with one line per equation.\n"
        "1) y = (3/4)x^3 - e^(2x) + sin(pi*x) - sqrt(7)\n2) 2A - B/(3+C) * sum(N=1 to 5; ln(N)^2) = "
        "5D*integral(a=0 to pi; cos(a))",
    ],
    "STEM": [
        "In quantum physics, what is superposition, and how does it relate to quantum entanglement?",
        "A satellite is in a circular orbit around the Earth and its speed decreases. What happens to its orbital radius and "
        "period? Justify your answer using principles of physics.",
        "Outline the two main stages of photosynthesis, including where they take place within the chloroplast.",
        "What is the central dogma of molecular biology? What processes are involved? Who named it?",
        "Describe the reaction of solid calcium carbonate with hydrochloric acid and write its balanced chemical equation.",
        "Explain the base rate fallacy and give five examples of how politicians use it in campaigns.",
        "How does a vaccine train the immune system?",
        "What are the key differences between renewable and non-renewable energy sources?",
    ],
    "humanities": [
        "Explain the correlation between GDP, inflation and unemployment, and how fiscal and monetary policy affect them.",
        "How do the stages of life shape our understanding of time and mortality?",
        "Discuss antitrust laws and their impact on market competition. Compare the US and China with some case studies.",
        "Create a lesson plan that uses drama or mime in a history class: 3 class periods on the Opium Wars.",
        "Share ideas for adapting art masterpieces into interactive experiences for children: 5 artworks and an idea for each.",
        "Explain what a social contract is and how Hobbes, Locke and Rousseau differ on it.",
        "What were the main causes of the French Revolution?",
        "Compare and contrast the political philosophies of Plato and Aristotle.",
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
