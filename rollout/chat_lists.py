"""The word lists of the ``chat`` task (``rollout/chat.py``): topics, recipients, activities,
concepts and tones its templates fill in (``items`` reads one). Plain data, kept in the project so the task is the same
on every machine; each list holds distinct items (a test checks it)."""

from __future__ import annotations

TOPICS = """
the history of jazz | a new bicycle lane | the school science fair | a broken washing machine |
the summer holidays | a community garden | the office move | a birthday party | the new library |
a delayed train | recycling at home | the football season | a charity run | a power cut |
the local bakery | learning to cook | a camping trip | the neighbourhood clean-up | a lost umbrella |
the first day of school | a job interview | a wedding anniversary | the winter weather |
a noisy construction site | the farmers market | a museum visit | the annual budget | a new puppy |
the team project | a flat tyre | the village festival | a photography class | the rainy season |
a road trip | the book club | a piano recital | the morning commute | a hospital visit |
the end of the year | a house move | the city marathon | a kitchen renovation | the spring fair |
a missed deadline | the new coffee machine | a surprise visit | the art exhibition | a garden party |
the parking rules | a volunteer day | a chess tournament | the science museum | a school trip |
the holiday schedule | a family reunion | the swimming lessons | a leaking roof | the concert tickets |
a borrowed book | the bus timetable | a cooking contest | the annual picnic | a weekend hike |
the quarterly report | a power outage | the bake sale | a car repair | the dance recital |
a late delivery | the opening of a cafe | a graduation ceremony | the school play | a lost cat |
the new software | a team lunch | the recycling bins | a fundraising dinner | the hiking club |
a broken window | the summer camp | a retirement party | the yoga class | a rainy weekend |
the new playground | a film night | the spelling bee | a homemade cake | the street parade |
a power bill | the office party | a fishing trip | the county fair | a moving sale |
the first snow | a guitar lesson | the water shortage | a long flight | the new neighbours |
a tree planting day | the talent show | a weekend market | the kitchen schedule | a broken fence |
the trip to the coast | a sports day | the exam results | a new recipe | the staff meeting |
a flooded basement | the library fines | a beach clean-up | the harvest festival | a train strike |
the science project | a new laptop | the theatre tickets | a cycling race | the bird feeder |
the apple harvest | a garage sale | the evening class | a sleepover | the neighbourhood watch |
a hot summer | the vegetable patch | a lost wallet | the music festival | a snow day |
the new gym | a charity auction | the spring cleaning | a dinner invitation | the choir concert |
a noisy party | the plant sale | a school reunion | the tennis club | a missing parcel |
the new bridge | a pottery class | the winter coat drive | a board game night | the art class |
a flat hunt | the compost heap | a tea party | the reading challenge | a fire drill |
the swimming pool | a quiz night | the rose garden | a river walk | the new menu |
a volunteer shift | the road works | a bike repair | the school garden | a study group |
the old railway | a craft fair | the lunch menu | a kite festival | the dog park |
a family recipe | the night sky | a park bench | the local election | a thank-you gift |
the new school year | a team victory | the recycling centre | a museum trip | the open day |
a leaking tap | the food bank | a language exchange | the town hall meeting | a sunny afternoon |
the coding club | a rescued hedgehog | the science lecture | a holiday card | the fruit harvest |
a hiking accident | the art supplies | a lemonade stand | the village shop | a charity concert |
the chess club | a carpool plan | the school uniform | a birthday surprise | the photo album |
a mountain climb | the public pool | a picnic basket | the garden shed | a train journey |
the museum of science | a new neighbour | the reading room | a weekend away | the ice rink |
a stray dog | the class photo | a pen pal | the city park | a snowman contest |
the lantern festival | a broken heater | the camping gear | a film festival | the paper mill |
a cooking class | the robot contest | a treasure hunt | the zoo trip | a sailing lesson |
the volunteer fair | a lost key | the bakery order | a model railway | the orchestra |
a picnic in the park | the insect hotel | a garden pond | the school bus | a stargazing night |
the new bakery | a village walk | the bicycle shop | a baby shower | the flower show |
a surprise party | the science quiz | a pumpkin patch | the water park | a field trip |
the community choir | a pie contest | the old lighthouse | a knitting circle | the city zoo
"""

RECIPIENTS = """
my neighbour | a colleague | my manager | my teacher | a close friend | my grandmother |
my grandfather | the landlord | a new employee | my sister | my brother | my cousin | my aunt |
my uncle | the school principal | a customer | a client | my coach | the team | my roommate |
a former classmate | the librarian | my doctor | the mayor | a volunteer | my mentor | my student |
the parents of my class | the hotel manager | a shop owner | the bus driver | my dentist |
the club members | my pen pal | a supplier | the board | my best friend | my partner | my parents |
my son | my daughter | the new neighbours | the committee | a job applicant | my boss |
the head chef | the gardener | the plumber | the museum guide | my old teacher | a reader |
the editor | the organiser | the coach of the team | my lab partner | the receptionist |
the nurse | the cleaner | the caretaker | the postman | my piano teacher | my swimming coach |
the school nurse | the choir director | the project lead | an investor | a journalist |
the tenants | the council | my godmother | my godfather | my niece | my nephew | the babysitter |
the dog walker | my yoga teacher | the bakery owner | the café staff | the parish | my host family |
the exchange student | the new intern | the sales team | the support team | my landlady |
the school board | the reading group | the volunteers | my tutor | the team captain |
my old friend | the hiking group | the chess club | my flatmate | the course leader |
the art teacher | my music teacher | the bookshop owner | my childhood friend | the caterer |
my driving instructor | the city council | the park ranger | my co-author | the photographer |
the wedding guests | the school staff | the neighbourhood group | my grandparents | the director
"""

ACTIVITIES = """
learning to cook | running a first marathon | starting a vegetable garden | saving money |
learning a new language | studying for exams | moving to a new city | keeping a houseplant alive |
training a puppy | writing a novel | learning to swim | starting a small business |
camping in the rain | baking bread | giving a speech | taking better photos | learning the guitar |
staying focused at work | sleeping better | eating more vegetables | riding a bike in the city |
painting with watercolours | hosting a dinner party | packing for a trip | running a meeting |
learning to knit | organising a closet | starting to jog | cooking for a large family |
studying at home | keeping a journal | learning to draw | planting trees | caring for a cat |
reading more books | learning to code | travelling on a budget | making new friends |
preparing for a job interview | cleaning a kitchen | growing tomatoes | decorating a small room |
walking a dog | learning chess | playing tennis | hiking in the mountains | bird watching |
making pizza at home | learning to dance | composting | doing yoga at home | working from home |
planning a wedding | teaching a child to read | taking notes in class | making a budget |
moving house | painting a room | fixing a bike | starting a podcast | brewing tea |
sewing a button | ice skating | skiing for the first time | playing the piano | singing in a choir |
volunteering | fishing | building a bookshelf | visiting a museum | writing a poem |
learning to juggle | making soup | cutting screen time | waking up early | drinking more water |
keeping a tidy desk | planning a picnic | running a book club | raising chickens |
learning to sail | making candles | taking care of teeth | getting fit after winter |
planning a road trip | learning to type faster | studying maths | learning history |
cooking rice | grilling vegetables | making a smoothie | cleaning windows | washing a car |
keeping bees | making friends at school | starting a blog | learning sign language |
playing football | coaching a children's team | looking after a rabbit | planting flowers |
learning to meditate | writing letters | recording a song | making a scrapbook |
organising a bake sale | painting a fence | building a snowman | making jam | learning to skate |
going on a first date | visiting a new country | camping with children | packing a lunch |
learning to ride a horse | cooking pasta | preparing for winter | keeping warm at home |
saving energy at home | reducing food waste | shopping for groceries | cleaning a bathroom |
studying for a driving test | learning to drive | getting a library card | making tea for guests |
throwing a birthday party | sharing a flat | starting a new job | leading a team |
writing a cover letter | learning photography | playing board games | climbing a wall |
riding a horse | swimming in the sea | learning to surf | picking a good book |
growing herbs indoors | making coffee | baking cookies | making a kite | flying a kite |
playing the drums | learning ballet | learning to whistle | growing strawberries |
caring for an old dog | visiting grandparents | welcoming a new neighbour | helping at a food bank |
learning to fish | building a birdhouse | feeding birds in winter | planning a garden |
cooking an omelette | ironing a shirt | folding laundry | setting a table | mending socks |
starting a running club | joining a choir | learning first aid | preparing for a storm
"""

CONCEPTS = """
photosynthesis | gravity | the water cycle | electricity | rainbows | the seasons | volcanoes |
the moon's phases | how plants grow | why the sky is blue | money | the heart | recycling |
the solar system | clouds | magnets | sound | time zones | the internet | earthquakes | fossils |
dinosaurs | the ocean tides | friction | the human brain | germs | vaccines | the weather |
tornadoes | lightning | snow | the alphabet | fractions | multiplication | democracy | taxes |
the food chain | bees and pollination | the eye | shadows | the wind | rivers | deserts |
rain forests | ice | boiling water | the stomach | bones | muscles | sleep | dreams | maps |
compasses | clocks | calendars | the planets | stars | the sun | eclipses | the atmosphere |
oxygen | the lungs | teeth | bread rising | yeast | melting | evaporation | rust | batteries |
light bulbs | computers | robots | airplanes | boats floating | bridges | trains | cars |
bicycles | rockets | satellites | telephones | television | music | echoes | colours |
mixing paint | the rainbow colours | leaves changing colour | seeds | flowers | trees | roots |
mushrooms | butterflies | caterpillars | frogs | fish breathing | birds flying | migration |
hibernation | camouflage | spiders | ants | bats | whales | elephants | penguins | polar bears |
the north pole | the equator | mountains | islands | caves | waves | sand | soil | worms |
compost | pollution | clean water | electricity at home | saving energy | wind turbines |
solar panels | the recycling symbol | voting | laws | rules at school | sharing | friendship |
kindness | emotions | manners | hygiene | washing hands | healthy food | vitamins | exercise |
blood | the skin | hair | fingerprints | the senses | taste | smell | hearing | touch |
numbers | zero | counting | shapes | circles | triangles | measuring | weight | height |
speed | temperature | thermometers | telescopes | microscopes | cells | DNA | twins |
growing up | babies | families | jobs | money saving | banks | shops | markets | trade |
history | museums | libraries | books | printing | writing | languages | sign language |
the post office | newspapers | the calendar year | leap years | birthdays | holidays | games |
teamwork | competition | the olympics | football rules | chess | puzzles | memory | learning
"""

# The tones a note, an email or a story is asked in (the judge knows the polarity each asks for:
# rewards/judge.py, TONE_SIGNS).
TONES = """
warm | cheerful | grateful | enthusiastic | encouraging | friendly | kind | upbeat | disappointed |
worried | sad | annoyed | formal | matter-of-fact | neutral | businesslike
"""


def items(text: str) -> list[str]:
    """The items of one of the lists above (separated by ``|``), stripped."""
    return [item.strip() for item in text.split("|") if item.strip()]
