"""Writes the small example datasets in examples/sft and examples/dpo (run from the repo root:
`python examples/make_examples.py`). Each pair is an AI-sounding draft and a plainer rewrite,
written for this project; enough to watch SFT and DPO work end to end, not to train a real model."""

import json
import random
from pathlib import Path

INSTRUCTION = "Rewrite this so it reads like a person wrote it. Keep the meaning.\n\n"

PAIRS = [
    ("In today's fast-paced world, effective time management is a testament to one's dedication and underscores the importance of prioritization.",
     "Managing your time well mostly comes down to deciding what matters first."),
    ("The restaurant offers a truly unparalleled culinary journey, seamlessly blending tradition and innovation in every delightful bite.",
     "The food was good. Old recipes, a few new twists, and the bread was the best thing on the table."),
    ("It is important to note that regular exercise plays a pivotal role in fostering both physical and mental well-being.",
     "Exercise helps your body and your head. Even a short walk most days makes a difference."),
    ("This groundbreaking smartphone is a game-changer, delving into cutting-edge features that elevate the user experience to new heights.",
     "The new phone is fast, the camera is better, and the battery finally lasts a full day."),
    ("Navigating the complexities of remote work requires a delicate balance between productivity and maintaining a healthy work-life harmony.",
     "Working from home is hard to switch off from. I close the laptop at six and leave it in another room."),
    ("The novel masterfully weaves a rich tapestry of themes, inviting readers on an unforgettable journey of self-discovery.",
     "The book is about a woman figuring out who she is after her marriage ends. It's slow in the middle but worth it."),
    ("In conclusion, climate change represents a multifaceted challenge that underscores the importance of collective action.",
     "Climate change won't be fixed by one country or one person. It needs a lot of people moving at once."),
    ("Our team is thrilled to announce the launch of our innovative platform, designed to empower users and revolutionize collaboration.",
     "We launched the new version today. Shared documents now update live, so you can stop emailing files around."),
    ("Learning a new language is a transformative endeavor that opens doors to a myriad of opportunities and fosters cultural understanding.",
     "Learning Spanish got me more than a new vocabulary. I can finally talk to my neighbours properly."),
    ("The city's vibrant nightlife offers a diverse array of experiences, catering to every taste and ensuring an unforgettable evening.",
     "There's a lot to do at night here: small bars, a couple of late cinemas, and food trucks until two."),
    ("Thank you for reaching out. I wanted to take a moment to express my heartfelt gratitude for your invaluable feedback.",
     "Thanks for the notes, they helped. I've fixed the two typos and rewritten the intro."),
    ("Gardening serves as a testament to the profound connection between humanity and nature, fostering mindfulness and tranquility.",
     "I garden because it's the one hour of the day I'm not looking at a screen."),
    ("The meeting underscored the importance of clear communication and highlighted several key areas for potential improvement.",
     "The meeting was mostly about how we talk to each other. We agreed to write decisions down."),
    ("Embarking on a journey of entrepreneurship requires resilience, unwavering determination, and a willingness to embrace failure.",
     "Starting a business means a lot of things going wrong. You keep going anyway, or you don't."),
    ("The museum's captivating exhibits offer a fascinating glimpse into the rich tapestry of the region's storied history.",
     "The museum is small but good. The room on the old harbour is the one to see."),
    ("Artificial intelligence is poised to revolutionize countless industries, ushering in a new era of unprecedented efficiency.",
     "AI will change how a lot of jobs are done. Some of that will be faster, and some of it will just be different."),
    ("It is worth noting that a balanced diet is crucial for maintaining optimal health and fostering overall well-being.",
     "Eat mostly plants, some protein, not too much sugar. Nothing fancy."),
    ("The hiking trail offers breathtaking vistas and a truly immersive experience that seamlessly connects visitors with nature.",
     "The trail is steep for the first mile, then it opens up and you can see the whole valley."),
    ("I am writing to formally express my profound interest in the position, as it aligns seamlessly with my skills and aspirations.",
     "I'd like to apply for the job. I've done similar work for four years and I'd like to do more of it."),
    ("This comprehensive guide delves into the intricacies of budgeting, empowering readers to take control of their financial journey.",
     "This guide shows you how to make a budget and actually stick to it."),
    ("The concert was a mesmerizing symphony of sound and emotion, leaving an indelible mark on everyone in attendance.",
     "The concert was loud and great. People were still singing on the way to the car park."),
    ("Fostering a culture of innovation is paramount for organizations seeking to thrive in an ever-evolving landscape.",
     "Companies that let people try new things tend to do better. The ones that punish mistakes don't."),
    ("The software update introduces a plethora of enhancements, meticulously crafted to elevate performance and reliability.",
     "The update fixes the crash on startup and makes search about twice as fast."),
    ("Volunteering is a rewarding endeavor that not only benefits the community but also fosters personal growth and fulfillment.",
     "I started volunteering at the food bank to help out. I stayed because I like the people."),
]


def main() -> None:
    root = Path(__file__).parent
    rng = random.Random(0)
    rows = list(PAIRS)
    rng.shuffle(rows)
    train, valid = rows[:20], rows[20:]
    for split, items in (("train", train), ("valid", valid)):
        sft = [{"prompt": INSTRUCTION + draft, "completion": human} for draft, human in items]
        dpo = [{"prompt": INSTRUCTION + draft, "chosen": human, "rejected": draft} for draft, human in items]
        for name, data in (("sft", sft), ("dpo", dpo)):
            out = root / name / f"{split}.jsonl"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data), encoding="utf-8")


if __name__ == "__main__":
    main()
