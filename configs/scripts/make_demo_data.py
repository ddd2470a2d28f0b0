"""Write the customer-service demo dataset under configs/data/.

Deterministic (fixed seed): running it twice writes the same bytes. Run it from
anywhere; the paths are resolved from this file.

    python configs/scripts/make_demo_data.py

Writes:
- customer_service.jsonl: multi-turn conversations in the OpenAI `messages`
  format, each with its `business_line` (billing, shipping, accounts);
- cs_billing.jsonl, cs_shipping.jsonl, cs_accounts.jsonl: the same, split by line;
- cs_faq_alpaca.json: FAQ records in the alpaca format (some with `system`,
  some with `history`);
- dataset_info.json: all of them registered the way LLaMA-Factory reads them.

Conversations are templates filled with slot values (names, order numbers,
amounts, dates, carriers, plans ...). Each business line's assistant keeps the
same policies and the same voice, so a small model has something to learn.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 1234
PER_LINE = 128  # conversations per business line; 32 steps per epoch at batch 4
DATA_DIR = Path(__file__).resolve().parent.parent / "data"

COMPANY = "Brightmart"

SYSTEM_PROMPTS = {
    "billing": f"You are {COMPANY}'s billing assistant. You help customers with charges, refunds, invoices, "
    "plans and payment methods. Be brief, friendly and exact.",
    "shipping": f"You are {COMPANY}'s shipping assistant. You help customers track orders, change deliveries, "
    "and sort out late, lost, damaged or wrong parcels. Be brief, friendly and exact.",
    "accounts": f"You are {COMPANY}'s accounts assistant. You help customers sign in, secure, update and close "
    "their accounts. Be brief, friendly and exact, and never ask for a password.",
}

CLOSINGS = {
    "billing": "You're welcome, {first}! If anything else on your bill looks off, just reply here.",
    "shipping": "You're welcome, {first}! You'll get an email from us at every step of the delivery.",
    "accounts": "You're welcome, {first}! Stay safe, and remember we will never ask for your password.",
}

THANKS = [
    "Thanks, that's all I needed.",
    "Great, thank you!",
    "Perfect, thanks for the help.",
    "OK, thanks a lot.",
    "That solves it, thank you.",
    "Thanks!",
]

FIRST_NAMES = [
    "Maria", "James", "Aisha", "Chen", "Olivia", "Mateo", "Priya", "Lucas", "Fatima", "Noah",
    "Sofia", "Daniel", "Yuki", "Omar", "Emma", "Kwame", "Hannah", "Diego", "Lena", "Ravi",
    "Grace", "Tomas", "Amara", "Ethan", "Ines", "Samuel", "Mei", "Jonas", "Zara", "Liam",
    "Nadia", "Victor", "Elena", "Marcus", "Keiko", "Pablo", "Chloe", "Arjun", "Ruth", "Felix",
]
LAST_NAMES = [
    "Lopez", "Smith", "Khan", "Wang", "Brown", "Garcia", "Patel", "Martin", "Ali", "Johnson",
    "Rossi", "Kim", "Tanaka", "Haddad", "Wilson", "Mensah", "Schmidt", "Silva", "Novak", "Iyer",
    "Taylor", "Costa", "Okafor", "Clark", "Moreau", "Reyes", "Lin", "Berg", "Ahmed", "Murphy",
]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
CARDS = ["Visa", "Mastercard", "American Express", "Discover"]
PLANS = [("Basic", "9.99"), ("Plus", "19.99"), ("Premium", "34.99"), ("Business", "79.00")]
PROMOS = ["SPRING15", "WELCOME10", "FREESHIP", "LOYAL20", "SAVE25", "BACK2SCHOOL"]
CARRIERS = ["UPS", "FedEx", "USPS", "DHL Express", "OnTrac"]
CITIES = ["Denver", "Memphis", "Louisville", "Chicago", "Atlanta", "Phoenix", "Columbus", "Reno", "Dallas",
          "Newark"]
STREETS = ["Maple Avenue", "Oak Street", "Pine Road", "Cedar Lane", "Elm Drive", "Harbor Way", "Mill Street",
           "Sunset Boulevard", "Lake Road", "Church Street"]
ITEMS = ["blender", "desk lamp", "pair of running shoes", "coffee grinder", "backpack", "wireless headset",
         "set of bed sheets", "air fryer", "office chair", "phone case", "yoga mat", "kettle"]
DEVICES = ["iPhone", "Android phone", "laptop", "iPad", "work computer"]
DOMAINS = ["gmail.com", "outlook.com", "yahoo.com", "icloud.com", "proton.me"]


def make_slots(rng: random.Random) -> dict[str, str]:
    """One customer and one case: every slot any template may use."""
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    month = rng.randrange(12)
    day = rng.randint(1, 20)
    plan, plan_price = rng.choice(PLANS)
    new_plan, new_plan_price = rng.choice([p for p in PLANS if p[0] != plan])
    item, wrong_item = rng.sample(ITEMS, 2)
    email = f"{first.lower()}.{last.lower()}{rng.randint(1, 99)}@{rng.choice(DOMAINS)}"
    new_email = f"{first.lower()}{rng.randint(100, 999)}@{rng.choice(DOMAINS)}"
    dollars = rng.randint(12, 480)
    cents = rng.choice(["00", "49", "95", "99", "50", "20"])
    return {
        "first": first,
        "last": last,
        "order": f"BM-{rng.randint(100000, 999999)}",
        "order2": f"BM-{rng.randint(100000, 999999)}",
        "amount": f"${dollars}.{cents}",
        "half": f"${dollars / 2:.2f}",
        "card": rng.choice(CARDS),
        "last4": f"{rng.randint(0, 9999):04d}",
        "date": f"{MONTHS[month]} {day}",
        "date2": f"{MONTHS[month]} {day + rng.randint(2, 6)}",
        "date3": f"{MONTHS[(month + 1) % 12]} {rng.randint(1, 28)}",
        "plan": plan,
        "plan_price": f"${plan_price}",
        "new_plan": new_plan,
        "new_plan_price": f"${new_plan_price}",
        "promo": rng.choice(PROMOS),
        "percent": str(rng.choice([10, 15, 20, 25])),
        "invoice": f"INV-{rng.randint(20000, 99999)}",
        "ref": f"RF-{rng.randint(1000000, 9999999)}",
        "ticket": f"CS-{rng.randint(10000, 99999)}",
        "carrier": rng.choice(CARRIERS),
        "tracking": f"1Z{rng.randint(10**9, 10**10 - 1)}{rng.randint(10, 99)}",
        "city": rng.choice(CITIES),
        "address": f"{rng.randint(2, 980)} {rng.choice(STREETS)}",
        "new_address": f"{rng.randint(2, 980)} {rng.choice(STREETS)}, Apt {rng.randint(1, 40)}",
        "item": item,
        "wrong_item": wrong_item,
        "days": str(rng.randint(2, 9)),
        "email": email,
        "masked": f"{email[0]}***@{email.split('@')[1]}",
        "new_email": new_email,
        "username": f"{first.lower()}_{rng.randint(10, 9999)}",
        "device": rng.choice(DEVICES),
        "login_city": rng.choice(["Lagos", "Bucharest", "Sao Paulo", "Hanoi", "Minsk", "Jakarta", "Lima"]),
    }


# Each scenario: openings (user), one assistant answer per opening style, and
# follow-ups in the order they would come up. A conversation takes the opening,
# then 0 to 2 of the follow-ups (kept in order; at most one where they are
# `exclusive` alternatives), then maybe a thank-you.
S = dict  # a scenario is a plain dict; the alias only keeps the tables short

BILLING = [
    S(
        user=[
            "I was charged twice for order {order}. I see two charges of {amount} on my {card} ending in {last4}.",
            "Why did you bill me two times? Order {order}, {amount} each, both on {date}.",
            "There's a double charge on my card for order {order} ({amount}). Please fix this.",
            "My bank statement shows {amount} taken twice on {date} for the same order, {order}.",
        ],
        assistant=[
            "I'm sorry about that, {first}. I can see two charges of {amount} for order {order} on {date}; the second "
            "one is a duplicate. I've refunded it (reference {ref}). Refunds go back to the original payment method "
            "and take 5-7 business days to show on your statement.",
        ],
        followups=[
            (["Can you make the refund faster?", "Is there any way to get the money back sooner?"],
             "I'm afraid not: once we release a refund, your bank takes 5-7 business days to post it. You'll get an "
             "email with reference {ref} today, which your bank can use to trace it."),
            (["Will this happen again on my next order?", "How do I know it won't happen again?"],
             "It shouldn't. The duplicate came from a payment retry on {date}; your next orders will be charged once. "
             "If you ever see a second charge, reply here and we'll refund it the same day."),
        ],
    ),
    S(
        user=[
            "I returned my {item} from order {order} on {date}, but I haven't got my refund yet.",
            "Where is my refund? I sent back order {order} over a week ago.",
            "Hello, I'd like to know the status of my refund for order {order}. It was {amount}.",
            "You received my return for {order} but the {amount} still isn't back on my card.",
        ],
        assistant=[
            "Thanks for your patience, {first}. We received the return for order {order} on {date2} and issued a "
            "refund of {amount} the same day (reference {ref}). Refunds go back to the original payment method and "
            "take 5-7 business days to show on your statement.",
        ],
        followups=[
            (["It's been more than 7 business days now.", "It's already past 7 business days."],
             "Thanks for checking. Please ask your bank about reference {ref}: the refund left us on {date2}. If they "
             "can't find it, reply here and I'll open a payment trace (ticket {ticket})."),
            (["Can I get store credit instead?", "Could you give me store credit rather than a refund?"],
             "The refund to your card has already been issued, so I can't switch it to store credit. For future "
             "returns you can pick store credit in the return form and get it instantly."),
        ],
    ),
    S(
        user=[
            "Can I get an invoice for order {order}? I need it for my expenses.",
            "I need a VAT invoice for my purchase on {date}, order {order}.",
            "Where do I download invoices? I need the one for {order}.",
            "My company needs a proper invoice with our address for order {order}.",
        ],
        assistant=[
            "Of course, {first}. I've emailed invoice {invoice} for order {order} to {masked}. You can also download "
            "any invoice yourself under Account > Billing > Invoices.",
        ],
        followups=[
            (["Can you add my company name to it?", "The invoice needs our company name and tax ID."],
             "Yes. Add the company name and tax ID under Account > Billing > Billing details, then press "
             "\"Regenerate\" next to invoice {invoice}. The new PDF replaces the old one."),
            (["I didn't get the email.", "Nothing arrived in my inbox."],
             "Please check your spam folder for a message from billing@brightmart.com. I've sent invoice {invoice} "
             "again to {masked} just now."),
        ],
    ),
    S(
        user=[
            "I want to upgrade from {plan} to {new_plan}. How much will I pay?",
            "How does billing work if I switch my plan from {plan} to {new_plan} today?",
            "Please change my subscription to {new_plan}. I'm on {plan} now.",
            "If I move from {plan} to {new_plan}, do I pay the full price this month?",
        ],
        assistant=[
            "Happy to help, {first}. {plan} is {plan_price} a month and {new_plan} is {new_plan_price}. When you "
            "switch, we prorate: you pay only the difference for the days left in this billing period, and from "
            "your next renewal on {date3} you pay {new_plan_price} a month.",
        ],
        followups=[
            (["OK, please go ahead and switch me.", "Sounds good, do it."],
             "Done: your plan is now {new_plan}. The prorated amount will appear on your next invoice, and the new "
             "price starts on {date3}."),
            (["Can I switch back later?", "What if I change my mind?"],
             "You can change plans at any time under Account > Billing > Plan. Changes are prorated the same way "
             "in both directions."),
        ],
    ),
    S(
        user=[
            "My payment was declined but my {card} works everywhere else.",
            "I got an email saying my payment for the {plan} plan failed. What do I do?",
            "Why was my card ending in {last4} declined?",
            "Your site says my payment failed on {date}. I don't want to lose my {plan} plan.",
        ],
        assistant=[
            "Sorry for the trouble, {first}. The payment of {plan_price} on {date} was declined by your bank, usually "
            "because of an expired card or a security check. Please update your card under Account > Billing > "
            "Payment methods. We retry automatically within 24 hours, and your {plan} plan stays active for a 7-day "
            "grace period.",
        ],
        followups=[
            (["I updated the card. Do I need to do anything else?", "New card added. Is that enough?"],
             "That's all. We'll retry the {plan_price} payment within 24 hours and email you a receipt when it goes "
             "through."),
            (["What happens after the 7 days?", "And if the payment still fails?"],
             "If the payment still fails after 7 days, your plan pauses until a payment succeeds. Nothing is deleted; "
             "you can pick up where you left off."),
        ],
    ),
    S(
        user=[
            "There's a charge of {plan_price} from Brightmart on {date} that I don't recognise.",
            "What is this {plan_price} charge on my {card}? I didn't buy anything.",
            "I see a payment to Brightmart on {date} and I have no idea what it is.",
            "Someone charged my card {plan_price}. It says Brightmart.",
        ],
        assistant=[
            "Let me explain, {first}. The {plan_price} charge on {date} is the monthly renewal of your {plan} "
            "subscription, billed to the {card} ending in {last4}. You can see every renewal under Account > Billing > "
            "Invoices.",
        ],
        followups=[
            (["I don't remember signing up for that.", "I never subscribed to anything."],
             "The {plan} subscription was started on your account, possibly with a free trial that turned into a paid "
             "plan. If you haven't used it since, I can cancel it and refund this renewal; just confirm here."),
            (["Yes, please cancel it and refund me.", "Please cancel and refund."],
             "Done: the {plan} subscription is cancelled and {plan_price} is refunded (reference {ref}). Refunds go "
             "back to the original payment method and take 5-7 business days to show on your statement."),
        ],
    ),
    S(
        user=[
            "I used the code {promo} but the discount wasn't applied to order {order}.",
            "My promo code {promo} didn't work at checkout.",
            "I forgot to enter {promo} when I paid for {order}. Can you still apply it?",
            "The {percent}% off code {promo} shows as invalid.",
        ],
        assistant=[
            "Thanks for letting me know, {first}. Code {promo} is valid for your order {order}, so I've applied the "
            "{percent}% discount as a refund to your original payment method (reference {ref}). It will show within "
            "5-7 business days.",
        ],
        followups=[
            (["Can I use the code again on my next order?", "Does the code still work for future orders?"],
             "Code {promo} can be used once per account, so it's now used up. Sign up for our newsletter to get the "
             "next codes first."),
            (["Why didn't it work in the first place?", "What went wrong with the code?"],
             "Codes are applied before shipping is added; if the basket changes after the code is entered, the code "
             "can drop off. Check the order summary for the discount line before you pay."),
        ],
    ),
    S(
        user=[
            "I want to cancel my {plan} subscription so I'm not charged again.",
            "Please stop the automatic renewal of my {plan} plan.",
            "How do I cancel my subscription? I don't want to be billed on {date3}.",
            "Cancel my {plan} plan, please. I'm not using it anymore.",
        ],
        assistant=[
            "I can do that, {first}. I've turned off renewal for your {plan} plan: there will be no more charges, and "
            "the plan stays active until the end of the current period on {date3}. We refund the current period only "
            "if you cancel within 14 days of paying for it.",
        ],
        followups=[
            (["I paid {days} days ago, so can I get a refund?", "It renewed {days} days ago. Refund?"],
             "Yes, that's within 14 days, so I've refunded {plan_price} (reference {ref}) and ended the plan today. "
             "Refunds go back to the original payment method and take 5-7 business days to show on your statement."),
            (["Will I lose my saved data?", "What happens to my account after that?"],
             "Your account and order history stay as they are; only the {plan} extras stop when the plan ends. "
             "You can subscribe again at any time."),
        ],
    ),
    S(
        user=[
            "How do I change the card you charge for my subscription?",
            "I have a new {card}. How do I update my payment method?",
            "My card ending in {last4} expired. Where do I add a new one?",
            "Can I pay my {plan} plan with a different card?",
        ],
        assistant=[
            "Sure, {first}. Go to Account > Billing > Payment methods, choose \"Add card\", and then \"Make default\". "
            "Your next {plan} renewal on {date3} will use the new card. We never see or store your full card number.",
        ],
        followups=[
            (["Can I remove the old card?", "How do I delete the old card?"],
             "Once the new card is the default, press \"Remove\" next to the card ending in {last4}."),
            (["Can I pay with PayPal instead?", "Do you take PayPal?"],
             "Yes. Under Account > Billing > Payment methods choose \"Add PayPal\", sign in to PayPal, and make it "
             "your default."),
        ],
    ),
]

SHIPPING = [
    S(
        user=[
            "My order {order} was supposed to arrive on {date} and it still hasn't.",
            "Where is my parcel? Order {order} is late.",
            "My {item} (order {order}) was due {date}. Still nothing.",
            "My package is {days} days late. The order number is {order}.",
        ],
        assistant=[
            "I'm sorry for the delay, {first}. Order {order} shipped with {carrier} (tracking {tracking}). The latest "
            "scan shows it at the {carrier} hub in {city}, and the new delivery estimate is {date2}. If it hasn't "
            "arrived 5 business days after the estimate, we'll send a replacement or refund you, whichever you prefer.",
        ],
        followups=[
            (["Can you ship a replacement now instead?", "Just send me another one now, please."],
             "I understand the wait is frustrating. The parcel is still moving, so I can't send a second one yet. "
             "If it hasn't arrived by 5 business days after {date2}, reply here and I'll ship a replacement the "
             "same day."),
            (["Can I track it myself?", "Where can I follow the parcel?"],
             "Enter {tracking} on the {carrier} website, or open Orders > {order} > Track in your Brightmart "
             "account."),
        ],
    ),
    S(
        user=[
            "I ordered on {date} and order {order} still says processing.",
            "When will my order {order} ship?",
            "Has my {item} shipped yet? Order {order}.",
            "It's been {days} days and I have no tracking number for {order}.",
        ],
        assistant=[
            "Thanks for your patience, {first}. Order {order} is packed and will leave our warehouse within 1 "
            "business day with {carrier}. You'll get an email with the tracking number as soon as it ships; delivery "
            "usually takes 3-5 business days after that.",
        ],
        followups=[
            (["Can I upgrade to express shipping?", "Can it go faster?"],
             "Yes: express shipping is $14.99 and arrives in 1-2 business days after dispatch. I've upgraded order "
             "{order}; the $14.99 will be charged to your original payment method."),
            (["Why is it taking so long?", "Why the delay?"],
             "Your {item} came from a restock that arrived at our warehouse this week. It's on its way out now."),
        ],
    ),
    S(
        user=[
            "Can I change the delivery address for order {order} to {new_address}?",
            "I moved! Please send order {order} to {new_address} instead.",
            "I need to change the shipping address on {order}.",
            "Wrong address on my order {order}. It should go to {new_address}.",
        ],
        assistant=[
            "No problem, {first}. Order {order} hasn't shipped yet, so I've changed the delivery address to "
            "{new_address}. You'll get a confirmation email, and the delivery estimate stays the same.",
            "Order {order} has already shipped with {carrier} (tracking {tracking}), so I can't change the address "
            "here, {first}. I've asked {carrier} to redirect it to {new_address}; redirects usually add 1-2 business "
            "days, and you'll get an email when it's confirmed.",
        ],
        followups=[
            (["Will it cost extra?", "Is there a fee for that?"],
             "No, there's no fee for an address change. We cover it."),
            (["Can I also change the name on the parcel?", "Can you put it under my partner's name?"],
             "Yes, I've added that name to the delivery details of order {order}. The carrier may ask for ID at the "
             "door for parcels over $200."),
        ],
    ),
    S(
        user=[
            "My {item} from order {order} arrived broken.",
            "The box for order {order} was crushed and the {item} inside is damaged.",
            "I just opened my parcel and the {item} is cracked.",
            "Order {order} came damaged. What now?",
        ],
        assistant=[
            "I'm so sorry, {first}. Please reply with a photo of the damaged {item} and the box. As soon as we have "
            "it, we'll ship a replacement free of charge with {carrier}; you don't need to send the damaged one back.",
        ],
        followups=[
            (["Here's the photo.", "I've attached the photos."],
             "Thank you, that's all we need. Your replacement {item} ships today under order {order2}; you'll get the "
             "tracking number by email."),
            (["Can I get a refund instead?", "I'd rather have my money back."],
             "Of course. I've refunded {amount} for the {item} (reference {ref}). Refunds go back to the original "
             "payment method and take 5-7 business days."),
        ],
        exclusive=True,
    ),
    S(
        user=[
            "Tracking says order {order} was delivered on {date} but I never got it.",
            "The {carrier} app shows delivered, but there's no parcel at my door.",
            "My package {tracking} is marked delivered and it's not here.",
            "I didn't receive order {order} even though it says delivered.",
        ],
        assistant=[
            "I'm sorry, {first}, that's worrying. {carrier} marked order {order} as delivered on {date} at {address}. "
            "Please check with neighbours, your mailroom and around the property; parcels sometimes turn up within "
            "48 hours. If it's still missing after that, reply here and we'll file a carrier claim and send a "
            "replacement.",
        ],
        followups=[
            (["The address you have is wrong.", "That's not my address!"],
             "Thanks for telling me. Please update your address under Account > Addresses; I've opened ticket {ticket} "
             "so that {carrier} can recover the parcel from the wrong address."),
            (["It's been 48 hours and still nothing.", "Two days later, still no parcel."],
             "Thanks for waiting. I've filed a claim with {carrier} (ticket {ticket}) and a replacement ships today "
             "under order {order2}. You don't need to do anything else."),
        ],
    ),
    S(
        user=[
            "I ordered a {item} but received a {wrong_item} instead.",
            "Wrong item in my parcel for order {order}: I got a {wrong_item}.",
            "You sent me the wrong thing. Order {order} should be a {item}.",
            "My order {order} has a {wrong_item} in it, not my {item}.",
        ],
        assistant=[
            "Sorry for the mix-up, {first}. I've shipped the correct {item} today under order {order2}, and emailed "
            "you a prepaid return label for the {wrong_item}. Please send it back within 30 days; drop it at any "
            "{carrier} location.",
        ],
        followups=[
            (["Do I have to pay for the return?", "Who pays for sending it back?"],
             "The label is prepaid, so returning our mistake costs you nothing."),
            (["Can I just keep the {wrong_item}?", "What if I keep it?"],
             "If you'd like to keep the {wrong_item}, reply \"keep\" and we'll charge its price to your original "
             "payment method; otherwise please return it within 30 days."),
        ],
    ),
    S(
        user=[
            "How much is shipping?",
            "What are your delivery options and prices?",
            "Do you offer free shipping?",
            "How long does standard shipping take?",
        ],
        assistant=[
            "Good question, {first}. Standard shipping is free on orders over $50 (otherwise $5.99) and takes 3-5 "
            "business days. Express shipping is $14.99 and takes 1-2 business days after dispatch.",
        ],
        followups=[
            (["Do you ship internationally?", "Can you ship to Canada?"],
             "Yes, we ship to Canada, the UK and most of the EU. International shipping is $19.99, takes 7-12 business "
             "days, and customs duties are paid on delivery."),
            (["Which carrier do you use?", "Who delivers the parcels?"],
             "We use {carrier}, UPS and USPS depending on your address and parcel size. Your tracking email tells you "
             "which one."),
        ],
    ),
    S(
        user=[
            "I'd like to return my {item} from order {order}.",
            "How do I send back order {order}? The {item} doesn't fit my needs.",
            "Can I get a return label for my {item}?",
            "I want to return something I bought on {date}.",
        ],
        assistant=[
            "Sure, {first}. You can return items within 30 days of delivery. I've emailed a prepaid return label for "
            "the {item} from order {order} to {masked}; drop the parcel at any {carrier} location. The refund is "
            "issued as soon as the parcel reaches our warehouse.",
        ],
        followups=[
            (["Do I need the original box?", "I threw away the packaging. Is that OK?"],
             "Any sturdy box is fine; the original packaging isn't required. Just make sure the {item} is protected."),
            (["Can I exchange it instead?", "Could I swap it for a different one?"],
             "Yes: choose \"Exchange\" under Orders > {order} > Return, pick the new item, and we'll ship it as "
             "soon as the return is scanned by {carrier}."),
        ],
    ),
    S(
        user=[
            "I won't be home on {date2}. Can the delivery of {order} be rescheduled?",
            "Can my parcel be held at a pickup point? Order {order}.",
            "I'm away this week. Can you delay delivery for {order}?",
            "Can {carrier} deliver order {order} on another day?",
        ],
        assistant=[
            "Yes, {first}. Order {order} is with {carrier} (tracking {tracking}). I've asked them to hold it at their "
            "pickup point in {city} for up to 7 days; bring a photo ID and the tracking number when you collect it.",
        ],
        followups=[
            (["Can I choose a specific delivery day instead?", "I'd rather pick a day."],
             "Of course: open the {carrier} link in your tracking email and choose \"Reschedule\"; you can pick any "
             "day in the next 7 days."),
            (["Can someone else pick it up?", "Can my neighbour collect it?"],
             "Yes, they'll need the tracking number {tracking} and a signed note from you, plus their own photo ID."),
        ],
    ),
]

ACCOUNTS = [
    S(
        user=[
            "I forgot my password and the reset email never arrives.",
            "How do I reset my password? I can't sign in.",
            "I've requested a password reset three times but got nothing.",
            "Please help, I can't log in to my Brightmart account.",
        ],
        assistant=[
            "Let's get you back in, {first}. I've sent a new reset link to {masked}. The link is valid for 30 minutes; "
            "if you don't see it, check your spam folder for a message from no-reply@brightmart.com. We will never "
            "ask for your password.",
        ],
        followups=[
            (["I don't have access to that email anymore.", "That's my old email, I can't open it."],
             "No problem. I'll verify you another way: please reply with the last 4 digits of a card on the account "
             "and the date of your last order. Then I can move the account to a new email."),
            (["Got it, the reset worked.", "It arrived and I'm back in."],
             "Great! For extra safety, turn on two-factor authentication under Account > Security."),
        ],
        exclusive=True,
    ),
    S(
        user=[
            "I lost my phone and can't get my two-factor codes.",
            "My {device} with the authenticator app was stolen. How do I sign in?",
            "I got a new phone and my 2FA codes don't work anymore.",
            "I'm locked out because of two-factor authentication.",
        ],
        assistant=[
            "I'm sorry to hear that, {first}. If you saved your backup codes, use one of them on the sign-in page "
            "under \"Use a backup code\". If not, I can start identity verification: we send a code to {masked}, and "
            "after a 24-hour security hold two-factor authentication is removed so you can set it up again.",
        ],
        followups=[
            (["I don't have backup codes. Please start the verification.", "No backup codes. Go ahead."],
             "Done. I've sent a verification code to {masked} (ticket {ticket}). Once you enter it, two-factor "
             "authentication will be removed after 24 hours. We'll email you when it's done."),
            (["Why do I have to wait 24 hours?", "Can you skip the 24-hour hold?"],
             "The hold protects you: if someone else is trying to take over your account, you have 24 hours to stop "
             "it. I can't skip it, sorry."),
        ],
    ),
    S(
        user=[
            "How do I turn on two-factor authentication?",
            "I want to make my account more secure. Do you have 2FA?",
            "Can I use an authenticator app for my Brightmart account?",
            "How do I set up 2FA on my {device}?",
        ],
        assistant=[
            "Great idea, {first}. Go to Account > Security > Two-factor authentication, choose \"Authenticator app\", "
            "scan the QR code with your app and enter the 6-digit code. Save the 10 backup codes somewhere safe; "
            "each works once if you lose your {device}.",
        ],
        followups=[
            (["Can I use text messages instead?", "Do you support SMS codes?"],
             "Yes, choose \"Text message\" instead of \"Authenticator app\". An app is safer, because SMS can be "
             "intercepted."),
            (["Which app should I use?", "Do you recommend an app?"],
             "Any app that supports TOTP works, for example Google Authenticator, Microsoft Authenticator or Authy."),
        ],
    ),
    S(
        user=[
            "Please close my account.",
            "I want to delete my Brightmart account and all my data.",
            "How do I close my account permanently?",
            "I don't use Brightmart anymore. Delete my account, please.",
        ],
        assistant=[
            "I'm sorry to see you go, {first}. You can close the account under Account > Privacy > Close account. "
            "After that there's a 30-day grace period in which you can change your mind; then your data is deleted "
            "for good. Active subscriptions are cancelled, and orders already placed are still delivered.",
        ],
        followups=[
            (["Can you do it for me?", "Please just close it from your side."],
             "Yes. I've sent a confirmation link to {masked}; the account closes as soon as you click it, and the "
             "30-day grace period starts then."),
            (["What about my store credit?", "I still have a gift card balance."],
             "Store credit and gift card balances are lost when the account is deleted. Use them before closing, or "
             "reply here within the 30-day grace period to reopen the account."),
        ],
    ),
    S(
        user=[
            "I want to change the email on my account to {new_email}.",
            "How do I update my login email?",
            "My email changed. Please use {new_email} from now on.",
            "Can I sign in with a different email address?",
        ],
        assistant=[
            "Sure, {first}. Go to Account > Profile > Email and enter {new_email}. We send a verification link to the "
            "new address; the change takes effect once you click it, and we notify {masked} so you know it happened.",
        ],
        followups=[
            (["The verification email didn't arrive.", "I never got the link."],
             "I've sent it again to {new_email}. It's valid for 24 hours; check your spam folder for no-reply@"
             "brightmart.com."),
            (["Will my order history move too?", "Do I keep my orders?"],
             "Yes, everything stays with the account: orders, addresses, subscriptions and store credit. Only the "
             "sign-in email changes."),
        ],
    ),
    S(
        user=[
            "My account is locked after too many sign-in attempts.",
            "It says my account is temporarily locked. What do I do?",
            "I typed the wrong password a few times and now I'm locked out.",
            "Why is my account {username} locked?",
        ],
        assistant=[
            "That's a safety lock, {first}. It lifts by itself after 15 minutes. If you're not sure of the password, "
            "reset it instead: I've sent a reset link to {masked}, valid for 30 minutes.",
        ],
        followups=[
            (["It's still locked after 15 minutes.", "Still locked."],
             "I've unlocked the account manually (ticket {ticket}). Please use the reset link so it doesn't lock "
             "again."),
            (["Was someone trying to get into my account?", "Is my account hacked?"],
             "The failed attempts came from your usual {device}, so it looks like a typo rather than an attack. To be "
             "safe, turn on two-factor authentication under Account > Security."),
        ],
    ),
    S(
        user=[
            "I got an email about a new sign-in from {login_city}. That wasn't me!",
            "Someone logged into my account from {login_city}.",
            "There's a login I don't recognise on my account.",
            "I think my account was hacked. There's an order I didn't place.",
        ],
        assistant=[
            "Thanks for acting fast, {first}. I've signed out every session on your account and blocked the sign-in "
            "from {login_city}. Please reset your password now with the link I've sent to {masked}, and turn on "
            "two-factor authentication under Account > Security.",
        ],
        followups=[
            (["They placed an order, {order}. Can you cancel it?", "There's an order {order} that isn't mine."],
             "I've cancelled order {order} before it shipped and refunded it (reference {ref}). Nothing will be "
             "delivered."),
            (["Did they see my card details?", "Is my card safe?"],
             "Your card is safe: we only ever show the last 4 digits of a card, and a new address needs the "
             "full card again. Your card number was never visible."),
        ],
    ),
    S(
        user=[
            "How can I download all the data you have about me?",
            "I'd like a copy of my personal data.",
            "Can I export my order history?",
            "I want to request my data under GDPR.",
        ],
        assistant=[
            "Of course, {first}. Go to Account > Privacy > Download your data and press \"Request export\". The file "
            "is ready within 48 hours; we email a download link to {masked}, valid for 7 days.",
        ],
        followups=[
            (["What format is the file?", "Is it a spreadsheet?"],
             "It's a ZIP file with JSON and CSV files: profile, addresses, orders, payments (last 4 digits only) and "
             "support messages."),
            (["Can you also delete the data afterwards?", "And then erase everything?"],
             "Yes: once you have the file, close the account under Account > Privacy > Close account; the data is "
             "deleted after the 30-day grace period."),
        ],
    ),
    S(
        user=[
            "I have two accounts by mistake. Can you merge them?",
            "I accidentally created a second account with {new_email}.",
            "I have an old account and a new one with {new_email}. Can you combine them?",
            "My old account and my new one have different orders. Can they become one?",
        ],
        assistant=[
            "Happy to help, {first}. I can merge the accounts: orders, addresses and store credit move into the one "
            "you keep, and the other is closed. Please confirm which email you want to keep, {masked} or {new_email}.",
        ],
        followups=[
            (["Keep {new_email}.", "Please keep {new_email}."],
             "Done: everything is now under {new_email}, and the other account is closed (ticket {ticket}). Sign in "
             "with {new_email} from now on."),
            (["Will my subscription carry over?", "What about my subscription?"],
             "It carries over: an active subscription moves with the orders. If both accounts had one, we "
             "refund the unused part of the second."),
        ],
    ),
]

SCENARIOS = {"billing": BILLING, "shipping": SHIPPING, "accounts": ACCOUNTS}

GREETINGS = ["", "", "Hi! ", "Hello. ", "Hey there! ", "Good morning. ", "Hi. "]
INTROS = ["", "", "", "This is {first} {last}. ", "My name is {first} {last}. ", "It's {first} here. "]


def conversation(rng: random.Random, line: str, scenario: dict) -> dict:
    slots = make_slots(rng)
    opening = rng.choice(GREETINGS) + rng.choice(INTROS) + rng.choice(scenario["user"])
    answer = rng.choice(scenario["assistant"])
    turns = [(opening, answer)]
    followups = scenario["followups"]
    n_follow = rng.choice([0, 1, 1, 2])
    if scenario.get("exclusive"):
        n_follow = min(n_follow, 1)  # the follow-ups are alternatives, not a sequence
    picked = sorted(rng.sample(range(len(followups)), n_follow))
    for i in picked:
        asks, reply = followups[i]
        turns.append((rng.choice(asks), reply))
    # A thank-you exchange closes some short conversations; never past 3 exchanges.
    if len(turns) < 3 and rng.random() < 0.35:
        turns.append((rng.choice(THANKS), CLOSINGS[line]))
    messages = [{"role": "system", "content": SYSTEM_PROMPTS[line]}]
    for ask, reply in turns:
        messages.append({"role": "user", "content": ask.format(**slots)})
        messages.append({"role": "assistant", "content": reply.format(**slots)})
    return {"business_line": line, "messages": messages}


def make_conversations(rng: random.Random) -> dict[str, list[dict]]:
    by_line: dict[str, list[dict]] = {}
    for line, scenarios in SCENARIOS.items():
        # Every scenario gets an equal share; the rest of the draw is random.
        rows = [conversation(rng, line, scenarios[i % len(scenarios)]) for i in range(PER_LINE)]
        rng.shuffle(rows)
        by_line[line] = rows
    return by_line


FAQ = {
    "billing": [
        ("How long does a refund take?",
         "Refunds go back to the original payment method and take 5-7 business days to show on your statement."),
        ("Where can I find my invoices?",
         "Under Account > Billing > Invoices. Each invoice can be downloaded as a PDF."),
        ("Which payment methods do you accept?",
         "Visa, Mastercard, American Express, Discover and PayPal. Add them under Account > Billing > "
         "Payment methods."),
        ("What happens if my payment fails?",
         "We retry automatically within 24 hours, and your plan stays active for a 7-day grace period while you "
         "update your card."),
        ("How much do the plans cost?",
         "Basic is $9.99 a month, Plus $19.99, Premium $34.99 and Business $79.00."),
        ("Is a plan change prorated?",
         "Yes. When you switch plans you pay or get credited only the difference for the days left in the period."),
        ("Can I get a refund after cancelling?",
         "We refund the current period if you cancel within 14 days of paying for it; otherwise the plan runs to the "
         "end of the period with no further charges."),
        ("I was charged twice. What should I do?",
         "Reply with the order number. We refund the duplicate charge the same day; it shows within 5-7 "
         "business days."),
        ("Can I add my company name to an invoice?",
         "Yes: add it under Account > Billing > Billing details and press \"Regenerate\" next to the invoice."),
        ("Can a promo code be used twice?", "No, each promo code can be used once per account."),
    ],
    "shipping": [
        ("How much is shipping?",
         "Standard shipping is free over $50 (otherwise $5.99) and takes 3-5 business days; express is $14.99 and "
         "takes 1-2 business days."),
        ("Do you ship internationally?",
         "Yes, to Canada, the UK and most of the EU, for $19.99. Delivery takes 7-12 business days and customs "
         "duties are paid on delivery."),
        ("My parcel is late. What can I do?",
         "If it hasn't arrived 5 business days after the estimate, we send a replacement or refund you, whichever you "
         "prefer."),
        ("Tracking says delivered but I have nothing.",
         "Check with neighbours and your mailroom; parcels often turn up within 48 hours. After that we file a carrier "
         "claim and send a replacement."),
        ("How do I return an item?",
         "Within 30 days of delivery: request a prepaid label under Orders > Return and drop the parcel at any carrier "
         "location."),
        ("My item arrived damaged.",
         "Send us a photo of the item and the box; we ship a free replacement and you keep the damaged one."),
        ("Can I change my delivery address?",
         "Yes, before the order ships. After that we ask the carrier to redirect it, which adds 1-2 business days."),
        ("Can I pick up my parcel somewhere?",
         "Yes, the carrier can hold it at a pickup point for up to 7 days; bring photo ID and the tracking number."),
        ("Which carriers do you use?",
         "UPS, FedEx, USPS, DHL Express and OnTrac, depending on address and parcel size."),
        ("I got the wrong item.",
         "We ship the right one at once and email a prepaid label to return the wrong one within 30 days."),
    ],
    "accounts": [
        ("How do I reset my password?",
         "Choose \"Forgot password\" on the sign-in page. The reset link is valid for 30 minutes; check your spam "
         "folder if it doesn't arrive."),
        ("How do I turn on two-factor authentication?",
         "Go to Account > Security > Two-factor authentication, scan the QR code with an authenticator app and save "
         "your backup codes."),
        ("I lost the phone with my 2FA codes.",
         "Use a backup code. Without one, we verify you by email and remove 2FA after a 24-hour security hold."),
        ("How do I close my account?",
         "Under Account > Privacy > Close account. You have 30 days to change your mind; then your data is deleted."),
        ("How do I change my email address?",
         "Under Account > Profile > Email. The change takes effect once you click the link we send to the new "
         "address."),
        ("Why is my account locked?",
         "Too many failed sign-ins lock the account for 15 minutes. Reset your password if you're not sure of it."),
        ("How do I download my data?",
         "Under Account > Privacy > Download your data. The export is ready within 48 hours and the link is valid for "
         "7 days."),
        ("Will you ever ask for my password?",
         "Never. Brightmart staff never ask for your password, by email, chat or phone."),
        ("Someone signed in to my account. What do I do?",
         "Tell us at once: we sign out every session. Then reset your password and turn on two-factor authentication."),
        ("Can you merge two accounts?",
         "Yes. Orders, addresses and store credit move into the account you keep, and the other one is closed."),
    ],
}

CLASSIFY = "Which team should handle this customer message? Answer billing, shipping or accounts."
REWRITE = "Rewrite this customer-service reply so it is friendlier, keeping every fact."


def make_alpaca(rng: random.Random, by_line: dict[str, list[dict]]) -> list[dict]:
    records: list[dict] = []
    # Plain FAQ answers; every third one carries the business line's system prompt.
    for line, pairs in FAQ.items():
        for i, (question, answer) in enumerate(pairs):
            record = {"instruction": question, "input": "", "output": answer}
            if i % 3 == 0:
                record["system"] = SYSTEM_PROMPTS[line]
            records.append(record)
    # Routing: which team owns a customer's first message.
    for line, rows in by_line.items():
        for row in rows[:6]:
            records.append({"instruction": CLASSIFY, "input": row["messages"][1]["content"], "output": line})
    # Multi-turn FAQ: the earlier questions go in `history`, which is trained on too.
    for line, pairs in FAQ.items():
        for start in (0, 4):
            history = [list(pair) for pair in pairs[start:start + 2]]
            question, answer = pairs[start + 2]
            records.append({"instruction": question, "input": "", "output": answer, "system": SYSTEM_PROMPTS[line],
                            "history": history})
    # A few rewrites with a non-empty input.
    for line in SCENARIOS:
        for i in sorted(rng.sample(range(len(FAQ[line])), 2)):
            answer = FAQ[line][i][1]
            records.append({"instruction": REWRITE, "input": answer,
                            "output": f"Thanks for reaching out! {answer} Anything else, just ask."})
    return records


def dataset_info() -> dict:
    openai_tags = {
        "role_tag": "role",
        "content_tag": "content",
        "user_tag": "user",
        "assistant_tag": "assistant",
        "system_tag": "system",
    }
    info: dict[str, dict] = {}
    for name in ("customer_service", "cs_billing", "cs_shipping", "cs_accounts"):
        info[name] = {
            "file_name": f"{name}.jsonl",
            "formatting": "sharegpt",
            "columns": {"messages": "messages"},
            "tags": dict(openai_tags),
        }
    info["cs_faq"] = {
        "file_name": "cs_faq_alpaca.json",
        "formatting": "alpaca",
        "columns": {"prompt": "instruction", "query": "input", "response": "output", "system": "system",
                    "history": "history"},
    }
    return info


def check(row: dict) -> None:
    messages = row["messages"]
    assert messages[0]["role"] == "system"
    roles = [m["role"] for m in messages[1:]]
    assert roles == ["user", "assistant"] * (len(roles) // 2) and 2 <= len(roles) <= 6, roles
    assert all("{" not in m["content"] for m in messages), messages


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    rng = random.Random(SEED)
    by_line = make_conversations(rng)
    everything = [row for rows in by_line.values() for row in rows]
    for row in everything:
        check(row)
    mixed = list(everything)
    rng.shuffle(mixed)

    DATA_DIR.mkdir(parents=True, exist_ok=True)
    write_jsonl(DATA_DIR / "customer_service.jsonl", mixed)
    for line in SCENARIOS:
        # Same conversations as in the mixed file, in the same relative order.
        write_jsonl(DATA_DIR / f"cs_{line}.jsonl", [row for row in mixed if row["business_line"] == line])
    alpaca = make_alpaca(rng, by_line)
    (DATA_DIR / "cs_faq_alpaca.json").write_text(json.dumps(alpaca, indent=2, ensure_ascii=False) + "\n",
                                                 encoding="utf-8")
    (DATA_DIR / "dataset_info.json").write_text(json.dumps(dataset_info(), indent=2) + "\n", encoding="utf-8")
    counts = {line: len(rows) for line, rows in by_line.items()}
    print(f"wrote {len(mixed)} conversations {counts} and {len(alpaca)} alpaca records to {DATA_DIR}")


if __name__ == "__main__":
    main()
