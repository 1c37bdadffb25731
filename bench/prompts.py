"""Open-ended prompts, the same for every server.

Each asks for a long answer so that a 135M model rarely reaches its end-of-sequence token before the token
budget: requests of equal length keep the servers' throughput comparable. Topics differ so that no server
gains from a prompt cache more than another would.
"""

from __future__ import annotations

WARMUP_PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."

PROMPTS: tuple[str, ...] = (
    "Write a long story about a dragon who is afraid of heights.",
    "Write a long story about a robot that learns to bake bread in a small village.",
    "Describe in detail a day in the life of a medieval blacksmith.",
    "Write a long essay about the history of the printing press and how it changed Europe.",
    "Explain step by step how a car engine works, in as much detail as you can.",
    "Write a long story about two friends who sail around the world in a tiny boat.",
    "Describe a busy market in a big city, with all its sounds, smells and people.",
    "Write a detailed guide to growing tomatoes in a small garden, from seed to harvest.",
    "Write a long story about a cat who becomes the mayor of a town.",
    "Explain in detail how the water cycle works and why it matters for life on Earth.",
    "Write a long letter from an astronaut on Mars to her family back home.",
    "Describe the journey of a river from a mountain spring to the sea.",
    "Write a long story about a young wizard who loses his wand on the first day of school.",
    "Write a detailed history of the bicycle, from its invention to today.",
    "Describe how to plan a two-week trip across Japan, day by day.",
    "Write a long story about a detective solving a mystery on a night train.",
    "Explain in detail how bees make honey and how a hive is organised.",
    "Write a long fairy tale about a princess who would rather be a sailor.",
    "Describe the life cycle of a star, from a cloud of gas to its final end.",
    "Write a long story about a village that wakes up one morning to find the sea has disappeared.",
    "Write a detailed explanation of how the internet delivers a web page to your computer.",
    "Write a long story about an old man who plants a forest, one tree at a time.",
    "Describe in detail how to cook a traditional three-course dinner for friends.",
    "Write a long adventure story about explorers who discover a hidden city in the jungle.",
)
