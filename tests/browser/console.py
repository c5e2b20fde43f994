"""The operator's console in headless Chromium (Debian's, never a
downloaded one), driven by Playwright. Run by tests/console.rs with one
argument, a JSON plan: the console's base URL, the keys, the browser, where
the screenshots go and what the test prepared. Exits non-zero (an
AssertionError or a Playwright error) when the console does not do what an
operator needs."""

import json
import os
import sys
import time
import urllib.error
import urllib.request

from playwright.sync_api import expect, sync_playwright

plan = json.loads(sys.argv[1])
BASE = plan["base"]
SHOTS = plan["screenshots"]
os.makedirs(SHOTS, exist_ok=True)
expect.set_options(timeout=15_000)


def status_of(path, key=None):
    """The status of a GET of the API, with a bearer key or none."""
    request = urllib.request.Request(BASE + path)
    if key:
        request.add_header("Authorization", "Bearer " + key)
    try:
        with urllib.request.urlopen(request) as answer:
            return answer.status
    except urllib.error.HTTPError as e:
        return e.code


def shot(page, name):
    page.screenshot(path=os.path.join(SHOTS, name + ".png"), full_page=True)


def sign_in(context, key):
    page = context.new_page()
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(BASE + "/console/")
    expect(page).to_have_url(BASE + "/console/login")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(BASE + "/console/")
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    return page, dialogs


def token_of(page):
    """The session's form token, as the sign-out form carries it."""
    return page.locator("form.who input[name=token]").get_attribute("value")


def post_form(page, path, fields):
    """A form POST from the page's session (its cookie), bypassing the page."""
    return page.request.post(BASE + path, form=fields, max_redirects=0)


with sync_playwright() as p:
    browser = p.chromium.launch(
        executable_path=plan["chromium"],
        args=[
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ],
    )

    # No key sees nothing: the API answers 401, the console the sign-in page.
    assert status_of("/api/v1/payments?order_id=oc2") == 401
    assert status_of("/api/v1/payments?order_id=oc2", plan["reader"]) == 200
    anonymous = browser.new_context()
    page = anonymous.new_page()
    answer = page.goto(BASE + "/console/dead-letters")
    expect(page).to_have_url(BASE + "/console/login")
    assert "dead" not in page.content().lower(), "a page shown without a session"
    csp = answer.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "unsafe-inline" not in csp and "script-src" not in csp, csp
    page.get_by_label("API key").fill("not-a-key-of-this-console-0123456789")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("Not a key")
    shot(page, "login")
    # A sign-in posted from another site is refused, even with a good key.
    elsewhere = page.request.post(BASE + "/console/login", form={"key": plan["reader"]},
                                  headers={"Origin": "https://elsewhere.example"}, max_redirects=0)
    assert elsewhere.status == 403, elsewhere.status
    assert not [c for c in anonymous.cookies() if c["name"] == "paynotify_console"]
    anonymous.close()

    # A read key: sees every page, may act on none (403), and offers no
    # action to click.
    reading = browser.new_context(viewport={"width": 1280, "height": 800})
    page, dialogs = sign_in(reading, plan["reader"])
    cookie = [c for c in reading.cookies() if c["name"] == "paynotify_console"][0]
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict", cookie
    assert plan["reader"] not in cookie["value"], "the key itself in the cookie"
    page.goto(BASE + "/console/dead-letters")
    expect(page.get_by_role("heading", name=plan["redrive_reason"])).to_be_visible()
    assert page.get_by_role("button", name="Redrive these").count() == 0
    token = token_of(page)
    refused = post_form(page, "/console/dead-letters/redrive",
                        {"token": token, "reason": plan["redrive_reason"], "confirm": "yes"})
    assert refused.status == 403, refused.status
    assert "may only read" in refused.text()
    reading.close()

    # An operate key, at 1280x800.
    operating = browser.new_context(viewport={"width": 1280, "height": 800})
    page, dialogs = sign_in(operating, plan["operator"])
    expect(page.locator("svg.chart rect")).to_have_count(12)
    shot(page, "overview")

    # A forged form token is refused, and nothing is done.
    forged = post_form(page, "/console/dead-letters/redrive",
                       {"token": "forged", "reason": plan["redrive_reason"], "confirm": "yes"})
    assert forged.status == 403, forged.status
    assert "token does not match" in forged.text()
    missing = post_form(page, "/console/parked/resolve",
                        {"payment_key": plan["parked_payment"], "event_key": "x", "note": "n", "confirm": "yes"})
    assert missing.status == 403, missing.status

    # Find a payment by its order id and see its timeline.
    page.get_by_role("link", name="Payments").click()
    page.get_by_label("Order id").fill(plan["order"])
    page.get_by_label("Order id").press("Enter")
    card = page.locator("article.payment")
    expect(card).to_have_count(1)
    expect(card.locator("dd.status")).to_have_text("PARTIALLY_REFUNDED")
    expect(card.locator("dd.order")).to_have_text(plan["order"])
    expect(card.locator("ol.timeline li")).to_have_count(2)
    expect(card.locator("ol.timeline li").nth(1)).to_contain_text("refund")
    # Its deliveries: the receiver was down, so the first is held.
    expect(card.locator("tr.delivery").first).to_contain_text("dead_lettered")
    shot(page, "payment")
    # Each event's notification as archived, verified again.
    card.locator("ol.timeline li").first.get_by_role("link").click()
    expect(page.get_by_role("heading", name="Notification")).to_be_visible()
    expect(page.locator("dd.verdict")).to_have_text("valid")
    expect(page.locator("pre.raw")).to_contain_text("orderId=" + plan["order"])
    shot(page, "notification")
    page.go_back()

    # An order id holding <script> is shown as text, and runs nothing.
    page.get_by_label("Order id").fill(plan["hostile_order"])
    page.get_by_role("button", name="Find").first.click()
    expect(page.locator("article.payment dd.order")).to_have_text(plan["hostile_order"])
    assert page.locator("script").count() == 0
    assert dialogs == [], dialogs
    shot(page, "hostile-order")

    # Search by status; a result opens its payment.
    page.get_by_role("link", name="Search", exact=True).click()
    page.get_by_label("Status").select_option("PARTIALLY_REFUNDED")
    page.get_by_role("button", name="Search").click()
    rows = page.locator("tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(plan["order"])
    shot(page, "search")
    rows.first.get_by_role("link").click()
    expect(page.locator("dd.order")).to_have_text(plan["order"])

    # Redrive a dead letter (after a confirmation) and see the payment applied.
    page.get_by_role("link", name="Dead letters").click()
    expect(page.get_by_role("heading", name=plan["redrive_reason"])).to_be_visible()
    shot(page, "dead-letters")
    expect(page.get_by_role("button", name="Redrive these 1")).to_be_visible()
    page.get_by_role("button", name="Redrive", exact=True).click()
    expect(page.get_by_role("heading", name="Confirm")).to_be_visible()
    shot(page, "confirm")
    page.get_by_role("button", name="Redrive it").click()
    expect(page.get_by_role("status")).to_contain_text("1 sent back to the queue")
    deadline = time.monotonic() + 30
    while True:
        page.goto(BASE + "/console/payments?source=unionpay&merchant={}&reference={}".format(
            plan["merchant"], plan["redriven_payment"]))
        if page.locator("dd.status").count() and page.locator("dd.status").inner_text() == "PAID":
            break
        assert time.monotonic() < deadline, "the redriven payment was never applied"
        time.sleep(0.3)

    # Resolve the parked refund, with a note, after a confirmation.
    page.get_by_role("link", name="Parked").click()
    row = page.locator("tr", has_text=plan["parked_payment"])
    row.get_by_label("Note").fill("refund for an order cancelled before payment")
    row.get_by_role("button", name="Resolve").click()
    expect(page.get_by_role("heading", name="Confirm")).to_be_visible()
    page.get_by_role("button", name="Resolve it").click()
    expect(page.get_by_role("status")).to_contain_text("is no longer parked")

    # Set the other aside: a dead letter until its payment comes.
    page.get_by_role("link", name="Parked", exact=True).click()
    row = page.locator("tr", has_text=plan["set_aside_payment"])
    row.get_by_label("Note").fill("payment is late at the PSP")
    row.get_by_role("button", name="Set aside").click()
    expect(page.get_by_role("heading", name="Confirm")).to_be_visible()
    page.get_by_role("button", name="Set it aside").click()
    expect(page.get_by_role("status")).to_contain_text("is a dead letter")

    # Resend a held delivery, after a confirmation.
    page.get_by_role("link", name="Deliveries").click()
    shot(page, "deliveries")
    row = page.locator("tr", has_text=plan["resend_event"])
    row.get_by_role("button", name="Resend").click()
    page.get_by_role("button", name="Resend it").click()
    expect(page.get_by_role("status")).to_contain_text("Resent")

    page.get_by_role("link", name="Reconcile").click()
    expect(page.locator("main")).to_contain_text("Run at")
    shot(page, "reconcile")

    # Every page works with the keyboard alone: the skip link is the first
    # stop, then the navigation.
    page.goto(BASE + "/console/")
    page.keyboard.press("Tab")
    expect(page.locator(".skip")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Overview")).to_be_focused()
    operating.close()

    # And on a phone.
    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True,
                                device_scale_factor=2)
    page, _ = sign_in(phone, plan["reader"])
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the overview is {width} px wide on a 390 px phone"
    shot(page, "overview-phone")
    phone.close()
    browser.close()

print("console: every flow passed; screenshots in", SHOTS)
