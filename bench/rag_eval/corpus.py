"""The retrieval eval's documents and questions, as data: each document a title and sections of sentences.

Every question is paraphrased (none copies its source sentence), names its subject as a user would, and has
the short strings an answer must contain to count as answered. Distractor documents carry similar names and
near topics (another Orion, an older timetable); unanswerable questions sit beside a document on their topic
whose text does not hold the answer. The files themselves are written from this at run time (files.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Section:
    heading: str
    sentences: tuple[str, ...]


@dataclass(frozen=True)
class Doc:
    filename: str
    title: str
    sections: tuple[Section, ...]

    @property
    def file_type(self) -> str:
        return self.filename.rpartition(".")[2]


@dataclass(frozen=True)
class Question:
    text: str
    filename: str  # the document holding the answer; for an unanswerable one, the near-topic document
    answers: tuple[str, ...] = ()  # any of these in the answer counts; empty: no document answers it

    @property
    def answerable(self) -> bool:
        return bool(self.answers)


def _doc(filename: str, title: str, *sections: tuple[str, list[str]]) -> Doc:
    return Doc(filename, title, tuple(Section(h, tuple(s)) for h, s in sections))


DOCS: tuple[Doc, ...] = (
    _doc(
        "harbor-ferry-timetable.pdf",
        "Harbor Ferry Timetable",
        (
            "Weekday service",
            [
                "The first ferry of the day leaves Pier 3 at 06:40 from Monday to Friday.",
                "Boats then run every twenty minutes until the evening rush is over.",
                "The crossing to Gull Island takes 35 minutes in calm weather.",
            ],
        ),
        (
            "Fares",
            [
                "A single adult ticket costs 4.20 euros and children under twelve travel free.",
                "Monthly passes are sold at the kiosk beside the waiting room.",
            ],
        ),
        (
            "The fleet",
            [
                "The largest vessel in the fleet is the Marisol, which carries up to 320 passengers.",
                "Bicycles are allowed on the lower deck outside peak hours.",
                "During winter storms the last sailing is cancelled at the captain's discretion.",
            ],
        ),
    ),
    _doc(
        "harbor-ferry-timetable-2019.txt",
        "Harbor Ferry timetable (archived 2019 edition)",
        (
            "Archive note",
            [
                "This edition was withdrawn when the new pier opened.",
                "Sailings in 2019 left from the old wooden jetty near the fish market.",
                "The old boats were painted green and white.",
            ],
        ),
    ),
    _doc(
        "orion-club-handbook.docx",
        "Orion Club Handbook",
        (
            "Membership",
            [
                "The secret password of the Orion club is tangerine-42.",
                "The annual membership fee is 65 dollars, payable every January.",
                "New members are sponsored by two existing members.",
            ],
        ),
        (
            "Meetings",
            [
                "The club gathers every Thursday evening in Hall B of the old observatory.",
                "Telescopes may be borrowed for one week at a time.",
            ],
        ),
        (
            "History",
            [
                "The club was founded in 1987 by the astronomer Greta Lindqvist.",
                "Its first telescope was a gift from a retired sea captain.",
            ],
        ),
    ),
    _doc(
        "orion-cafe-menu.md",
        "Orion Cafe menu",
        (
            "Drinks",
            [
                "The Orion Cafe serves oat milk flat whites and mint tea.",
                "The house special is a cardamom hot chocolate.",
            ],
        ),
        (
            "Opening",
            [
                "The cafe opens at eight in the morning and closes at six.",
                "Dogs are welcome on the terrace.",
            ],
        ),
    ),
    _doc(
        "sourdough-guide.html",
        "Sourdough baking guide",
        (
            "Starter",
            [
                "Feed the starter with equal weights of rye flour and water.",
                "A healthy starter doubles in size within six hours.",
            ],
        ),
        (
            "Proofing",
            [
                "The shaped loaf proofs overnight in the fridge for 14 hours.",
                "Dough that springs back slowly when pressed is ready to bake.",
            ],
        ),
        (
            "Baking",
            [
                "Bake the loaf in a cast iron pot at 245 degrees Celsius.",
                "Remove the lid after 20 minutes so that the crust can darken.",
                "Let the bread cool for an hour before slicing it.",
            ],
        ),
    ),
    _doc(
        "server-room-runbook.md",
        "Server room runbook",
        (
            "Access",
            [
                "The server room door uses the keypad code 7319.",
                "Visitors must sign the paper log kept on the shelf by the door.",
            ],
        ),
        (
            "Cooling",
            [
                "The room is held at 19 degrees Celsius by two redundant chillers.",
                "If the temperature alarm sounds, page the facilities engineer on duty.",
            ],
        ),
        (
            "Power",
            [
                "The backup generator runs a test every first Sunday of the month.",
                "Its diesel tank lasts about 48 hours at full load.",
            ],
        ),
    ),
    _doc(
        "volunteer-roster.csv",
        "Volunteer roster",
        ("", []),
    ),
    _doc(
        "garden-plot-allocation.eml",
        "Allotment garden plots",
        (
            "",
            [
                "Dear gardeners,",
                "Plot 17 has been given to Mr. Okafor, who will grow pumpkins there.",
                "The water taps will be switched on again on the 15th of April.",
                "The compost heap is now behind the tool shed, next to the blue gate.",
                "Each plot holder must cut the hedge along their boundary twice a year.",
                "The allotment association's annual rent is 38 pounds per plot.",
                "Best wishes, the garden committee",
            ],
        ),
    ),
    _doc(
        "museum-visitor-notes.txt",
        "City museum visitor notes",
        (
            "Galleries",
            [
                "The dinosaur skeleton in the main hall is a Diplodocus cast named Dippy.",
                "The Egyptian gallery is on the second floor, beside the coin collection.",
            ],
        ),
        (
            "Visiting",
            [
                "Entry to the permanent collection is free on the first Wednesday of each month.",
                "Guided tours start at 11:15 at the information desk.",
                "Large bags must be left in the cloakroom in the basement.",
            ],
        ),
    ),
    _doc(
        "quarterly-sales-review.pptx",
        "Quarterly sales review",
        (
            "Headline",
            [
                "Revenue in the third quarter reached 8.4 million euros.",
                "The strongest region was Scandinavia, up 22 percent on last year.",
            ],
        ),
        (
            "Products",
            [
                "The best selling product was the Falcon X2 water pump.",
                "Returns fell to 1.3 percent of units shipped.",
            ],
        ),
        (
            "Next steps",
            [
                "A new warehouse will open in Rotterdam in February.",
                "The sales team will hire nine new account managers.",
            ],
        ),
    ),
    _doc(
        "warehouse-inventory.xlsx",
        "Warehouse inventory",
        ("", []),
    ),
    _doc(
        "device-config.json",
        "Device configuration",
        ("", []),
    ),
    _doc(
        "lighthouse-keeper.epub",
        "The Lighthouse Keeper",
        (
            "Chapter 1: Arrival",
            [
                "Ada Quint arrived at the Skerry lighthouse on a grey morning in 1911.",
                "She brought a canary called Pip and a trunk full of books.",
                "The lamp had to be lit every evening at sunset.",
            ],
        ),
        (
            "Chapter 2: The storm",
            [
                "In the great storm the lighthouse lamp burned for three nights without rest.",
                "A fishing boat named the Kittiwake was saved by its beam.",
                "Afterwards Ada planted a row of sea kale by the door.",
            ],
        ),
    ),
    _doc(
        "lighthouse-visitor-guide.html",
        "Lighthouse visitor guide",
        (
            "Visiting the lighthouse",
            [
                "The lighthouse tower has 154 steps to the lantern room.",
                "Tours run on Saturdays from May to September.",
            ],
        ),
    ),
    _doc(
        "staff-handbook-2024.docx",
        "Staff handbook",
        (
            "Leave",
            [
                "Full-time employees receive 27 days of paid holiday per year.",
                "Unused holiday days can be carried over until the end of March.",
            ],
        ),
        (
            "Expenses",
            [
                "Travel expenses must be submitted within 30 days of the trip.",
                "Meals during business travel are reimbursed up to 40 euros a day.",
            ],
        ),
    ),
)

# Tabular and structured documents: their rows and fields are written by files.py from these.
VOLUNTEER_ROWS: tuple[tuple[str, str, str, str], ...] = (
    ("name", "role", "shift", "phone extension"),
    ("Priya Raman", "first aid", "Saturday morning", "214"),
    ("Tomasz Nowak", "ticket desk", "Saturday afternoon", "215"),
    ("Lena Fischer", "car park steward", "Sunday morning", "216"),
    ("Samuel Adeyemi", "stage crew", "Sunday afternoon", "217"),
    ("Hannah Kowalczyk", "lost and found", "Saturday evening", "218"),
    ("Marco Bellini", "catering", "Sunday evening", "219"),
)
INVENTORY_ROWS: tuple[tuple[str, str, str, str], ...] = (
    ("item", "aisle", "quantity", "supplier"),
    ("galvanised bolts M8", "aisle 4", "12500", "Brightfast Ltd"),
    ("copper pipe 15mm", "aisle 9", "640", "Nordic Metals"),
    ("safety helmets", "aisle 2", "85", "Guardline"),
    ("pallet wrap", "aisle 11", "230", "Polyroll"),
    ("fire extinguishers", "aisle 1", "42", "Guardline"),
)
DEVICE_CONFIG: dict[str, object] = {
    "device": {"name": "greenhouse-sensor-7", "firmware": "3.8.1", "location": "north greenhouse"},
    "network": {"wifi_ssid": "Greenhouse-IoT", "report_interval_seconds": 90},
    "alerts": {"max_humidity_percent": 85, "contact_email": "growers@example.org"},
    "notes": "The sensor's battery is replaced every autumn by the maintenance team.",
}

QUESTIONS: tuple[Question, ...] = (
    # pdf
    Question("When does the earliest weekday boat depart?", "harbor-ferry-timetable.pdf", ("06:40", "6:40")),
    Question("How long is the trip over to Gull Island?", "harbor-ferry-timetable.pdf", ("35",)),
    Question("What is the price of one adult fare on the ferry?", "harbor-ferry-timetable.pdf", ("4.20", "4,20")),
    Question("Which ship is the biggest one the ferry company operates?", "harbor-ferry-timetable.pdf", ("marisol",)),
    Question("How many people fit on the Marisol?", "harbor-ferry-timetable.pdf", ("320",)),
    # txt (distractor with a similar name)
    Question("Where did ferries depart from back in 2019?", "harbor-ferry-timetable-2019.txt", ("jetty", "fish")),
    # docx
    Question("What is the Orion club's secret password?", "orion-club-handbook.docx", ("tangerine-42", "tangerine")),
    Question("How much does it cost per year to belong to the Orion club?", "orion-club-handbook.docx", ("65",)),
    Question("On which weekday do Orion club members meet?", "orion-club-handbook.docx", ("thursday",)),
    Question("Who started the Orion astronomy club?", "orion-club-handbook.docx", ("lindqvist", "greta")),
    Question("In what year was the Orion club established?", "orion-club-handbook.docx", ("1987",)),
    # md (distractor with a similar name)
    Question("What is the signature drink at the Orion Cafe?", "orion-cafe-menu.md", ("cardamom",)),
    Question("What time does the Orion Cafe open its doors?", "orion-cafe-menu.md", ("eight", "8")),
    # html
    Question("For how many hours should the shaped sourdough rest in the fridge?", "sourdough-guide.html", ("14",)),
    Question("What oven temperature is the sourdough baked at?", "sourdough-guide.html", ("245",)),
    Question("What kind of flour is the sourdough starter fed with?", "sourdough-guide.html", ("rye",)),
    Question("When should the lid come off the pot while baking bread?", "sourdough-guide.html", ("20",)),
    Question("How quickly should a good starter double?", "sourdough-guide.html", ("six", "6")),
    # md
    Question("What code opens the server room?", "server-room-runbook.md", ("7319",)),
    Question("What temperature is the server room kept at?", "server-room-runbook.md", ("19",)),
    Question("How long can the backup generator run on its fuel?", "server-room-runbook.md", ("48",)),
    Question("When is the generator tested?", "server-room-runbook.md", ("first sunday", "sunday")),
    Question("Who should be paged when the temperature alarm goes off?", "server-room-runbook.md", ("facilities",)),
    # csv
    Question("Who handles first aid among the volunteers?", "volunteer-roster.csv", ("priya", "raman")),
    Question("What is Tomasz Nowak's volunteer role?", "volunteer-roster.csv", ("ticket",)),
    Question("Which shift does Lena Fischer work?", "volunteer-roster.csv", ("sunday morning",)),
    Question("What phone extension does Samuel Adeyemi have?", "volunteer-roster.csv", ("217",)),
    Question("Which volunteer looks after lost and found?", "volunteer-roster.csv", ("hannah", "kowalczyk")),
    # eml
    Question("Who was given garden plot 17?", "garden-plot-allocation.eml", ("okafor",)),
    Question("When will the allotment water be turned back on?", "garden-plot-allocation.eml", ("15", "april")),
    Question("Where has the compost heap been moved to?", "garden-plot-allocation.eml", ("shed", "blue gate")),
    Question("How much is the yearly rent for an allotment plot?", "garden-plot-allocation.eml", ("38",)),
    Question("How often must plot holders trim their hedge?", "garden-plot-allocation.eml", ("twice",)),
    # txt
    Question("What is the name of the dinosaur in the museum's main hall?", "museum-visitor-notes.txt", ("dippy",)),
    Question("On which floor is the museum's Egyptian gallery?", "museum-visitor-notes.txt", ("second", "2")),
    Question("When can you visit the museum collection without paying?", "museum-visitor-notes.txt", ("wednesday",)),
    Question("At what time do guided museum tours begin?", "museum-visitor-notes.txt", ("11:15",)),
    Question("Where do visitors leave large bags at the museum?", "museum-visitor-notes.txt", ("cloakroom",)),
    # pptx
    Question("How much revenue was made in Q3?", "quarterly-sales-review.pptx", ("8.4",)),
    Question("Which region performed best in the quarterly sales?", "quarterly-sales-review.pptx", ("scandinavia",)),
    Question("What was the top selling product last quarter?", "quarterly-sales-review.pptx", ("falcon",)),
    Question("Where will the new warehouse be opened?", "quarterly-sales-review.pptx", ("rotterdam",)),
    Question("How many account managers will the sales team recruit?", "quarterly-sales-review.pptx", ("nine", "9")),
    # xlsx
    Question("In which aisle are the copper pipes stored?", "warehouse-inventory.xlsx", ("9",)),
    Question("How many galvanised M8 bolts are in stock?", "warehouse-inventory.xlsx", ("12500", "12,500", "12 500")),
    Question("Who supplies the pallet wrap?", "warehouse-inventory.xlsx", ("polyroll",)),
    Question("How many safety helmets does the warehouse hold?", "warehouse-inventory.xlsx", ("85",)),
    Question("Which supplier provides the fire extinguishers?", "warehouse-inventory.xlsx", ("guardline",)),
    # json
    Question("Which firmware version is the greenhouse sensor running?", "device-config.json", ("3.8.1",)),
    Question("How often does the greenhouse sensor report, in seconds?", "device-config.json", ("90",)),
    Question("What Wi-Fi network does the greenhouse sensor join?", "device-config.json", ("greenhouse-iot",)),
    Question("Above what humidity does the greenhouse sensor raise an alert?", "device-config.json", ("85",)),
    Question("Which email address receives the greenhouse alerts?", "device-config.json", ("growers@example.org",)),
    # epub
    Question("In what year did Ada Quint come to the Skerry lighthouse?", "lighthouse-keeper.epub", ("1911",)),
    Question("What was the name of Ada's canary?", "lighthouse-keeper.epub", ("pip",)),
    Question("Which boat was rescued thanks to the lighthouse beam?", "lighthouse-keeper.epub", ("kittiwake",)),
    Question("What did Ada grow next to the lighthouse door?", "lighthouse-keeper.epub", ("kale",)),
    # html (distractor with a similar name)
    Question("How many stairs lead up to the lighthouse lantern room?", "lighthouse-visitor-guide.html", ("154",)),
    # docx
    Question("How many days of paid leave does a full-time employee get?", "staff-handbook-2024.docx", ("27",)),
    Question("What is the daily limit for meal expenses on business trips?", "staff-handbook-2024.docx", ("40",)),
    Question("Within how many days must travel expenses be claimed?", "staff-handbook-2024.docx", ("30",)),
    # Unanswerable: a document on the topic is there, the answer is in none.
    Question("What is the phone number of the ferry office?", "harbor-ferry-timetable.pdf"),
    Question("How much does it cost to take a car on the ferry?", "harbor-ferry-timetable.pdf"),
    Question("How many members does the Orion club have?", "orion-club-handbook.docx"),
    Question("What is the Orion club's website address?", "orion-club-handbook.docx"),
    Question("How much salt goes into the sourdough dough?", "sourdough-guide.html"),
    Question("What brand of air conditioning is installed in the server room?", "server-room-runbook.md"),
    Question("What is Priya Raman's email address?", "volunteer-roster.csv"),
    Question("Who is the chair of the garden committee?", "garden-plot-allocation.eml"),
    Question("How much does a ticket to the museum's special exhibitions cost?", "museum-visitor-notes.txt"),
    Question("What was the profit margin in the third quarter?", "quarterly-sales-review.pptx"),
    Question("What is the unit price of the copper pipe?", "warehouse-inventory.xlsx"),
    Question("What is the IP address of the greenhouse sensor?", "device-config.json"),
    Question("What was the name of Ada Quint's brother?", "lighthouse-keeper.epub"),
    Question("How many days of sick leave do employees get?", "staff-handbook-2024.docx"),
)
