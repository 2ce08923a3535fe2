#!/usr/bin/env python3
"""Drives acctor's Stripe sandbox with Stripe's official Python library (stripe-python).

The official library turns every answer into typed resources, follows list cursors
(auto_paging_iter, forwards and backwards), maps error answers to its exception classes
by status and error type, replays idempotent requests, and verifies webhook signatures
(stripe.Webhook.construct_event). A run that reaches the end proves the sandbox speaks
Stripe's wire format well enough for an unmodified Stripe integration whose API base
was swapped.

Usage:
    python3 -m venv /tmp/stripevenv && /tmp/stripevenv/bin/pip install stripe
    cargo run -- sandbox --listen 127.0.0.1:0        # prints the sandbox URL
    /tmp/stripevenv/bin/python scripts/stripe_official_client_check.py http://127.0.0.1:PORT

It opens its own accounts through the sandbox's admin API (`/stripe/admin`), so it can
run against any sandbox, repeatedly. Exits non-zero at the first failure.
"""

import http.server
import json
import queue
import sys
import threading
import time
import urllib.request

import stripe

# How long to wait for webhooks that must come.
WEBHOOK_WAIT_SECS = 15

GENERATED = {
    "products": 250,
    "prices": 40,
    "customers": 120,
    "subscriptions": 60,
    "invoices": 30,
    "payment_intents": 30,
    "charges": 30,
    "refunds": 10,
    "disputes": 10,
    "payouts": 10,
}

RESOURCES = {
    "products": stripe.Product,
    "prices": stripe.Price,
    "customers": stripe.Customer,
    "subscriptions": stripe.Subscription,
    "invoices": stripe.Invoice,
    "payment_intents": stripe.PaymentIntent,
    "charges": stripe.Charge,
    "refunds": stripe.Refund,
    "disputes": stripe.Dispute,
    "payouts": stripe.Payout,
}


def step(message):
    print(f"- {message}", flush=True)


def expect(condition, message):
    if not condition:
        raise AssertionError(message)


def expect_raises(error_class, call, check=None):
    try:
        call()
    except error_class as e:
        if check is not None:
            check(e)
        return e
    raise AssertionError(f"expected {error_class.__name__}")


class Admin:
    """The sandbox's admin API (JSON)."""

    def __init__(self, stripe_base):
        self.base = f"{stripe_base}/admin"

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.base}{path}",
            data=data,
            method=method,
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request) as response:
            return json.loads(response.read() or b"{}")


class Receiver:
    """A webhook endpoint on 127.0.0.1:0 that queues (payload, Stripe-Signature)."""

    def __init__(self):
        self.deliveries = queue.Queue()
        deliveries = self.deliveries

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("content-length", "0"))
                payload = self.rfile.read(length)
                deliveries.put((payload, self.headers.get("stripe-signature"),
                                self.headers.get("content-type")))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def take(self, n):
        got = []
        deadline = time.monotonic() + WEBHOOK_WAIT_SECS
        while len(got) < n:
            remaining = deadline - time.monotonic()
            expect(remaining > 0, f"only {len(got)} of {n} webhooks arrived")
            got.append(self.deliveries.get(timeout=remaining))
        return got


def check_lists(account):
    for name, resource in RESOURCES.items():
        params = {"limit": 100}
        if name == "subscriptions":
            params["status"] = "all"
        objects = list(resource.list(**params).auto_paging_iter())
        expect(len(objects) == GENERATED[name], f"{name}: {len(objects)} listed")
        expect(all(isinstance(o, resource) for o in objects), f"{name}: typed as {resource.__name__}")
        ids = [o.id for o in objects]
        expect(len(set(ids)) == len(ids), f"{name}: no duplicates")
        keys = [(o.created, o.id) for o in objects]
        expect(keys == sorted(keys, reverse=True), f"{name}: newest first")
    step("every type lists completely through auto_paging_iter, typed and newest first")

    live = list(stripe.Subscription.list(limit=100).auto_paging_iter())
    expect(all(s.status != "canceled" for s in live), "default subscription list hides canceled")
    expect(len(live) < GENERATED["subscriptions"], "some generated subscriptions are canceled")
    step(f"subscriptions without status: {len(live)} live of {GENERATED['subscriptions']}")

    products = list(stripe.Product.list(limit=100).auto_paging_iter())
    pivot = products[120]
    backwards = list(stripe.Product.list(limit=7, ending_before=pivot.id).auto_paging_iter())
    expect([p.id for p in backwards] == [p.id for p in reversed(products[:120])],
           "ending_before pages back to the newest")
    window = stripe.Product.list(limit=100, created={"gte": products[200].created,
                                                      "lte": products[50].created})
    inside = [p for p in window.auto_paging_iter()]
    expected = [p.id for p in products if products[200].created <= p.created <= products[50].created]
    expect([p.id for p in inside] == expected, "created[gte]/created[lte] select their window")
    step("ending_before paging and created windows")

    got = stripe.Product.retrieve(pivot.id)
    expect(got.id == pivot.id and got.name == pivot.name, "retrieve answers the object")
    expect(got.last_response.request_id.startswith("req_"), "Request-Id header")

    def missing(e):
        expect(e.http_status == 404 and e.code == "resource_missing", f"404 resource_missing, got {e}")
        expect(e.param == "id", "param id")

    expect_raises(stripe.InvalidRequestError, lambda: stripe.Product.retrieve("prod_missing"), missing)
    expect_raises(stripe.InvalidRequestError, lambda: stripe.Product.list(limit=101),
                  lambda e: expect(e.param == "limit", "limit refused by name"))
    expect_raises(stripe.InvalidRequestError, lambda: stripe.Product.list(colour="red"),
                  lambda e: expect(e.code == "parameter_unknown", "unknown parameter refused"))
    step("retrieve, 404 resource_missing, bad parameters")


def check_writes():
    product = stripe.Product.create(name="Official check plan", metadata={"source": "official-client"},
                                    idempotency_key="official-check-product")
    again = stripe.Product.create(name="Official check plan", metadata={"source": "official-client"},
                                  idempotency_key="official-check-product")
    expect(again.id == product.id, "an idempotent replay answers the same product")
    expect(again.last_response.headers.get("Idempotent-Replayed") == "true", "Idempotent-Replayed")
    expect_raises(stripe.IdempotencyError,
                  lambda: stripe.Product.create(name="Another", idempotency_key="official-check-product"))
    step(f"product {product.id} created once under its idempotency key")

    updated = stripe.Product.modify(product.id, description="Updated by the official client",
                                    metadata={"source": "", "tier": "gold"})
    expect(updated.description == "Updated by the official client", "modify sets description")
    expect(updated.metadata.to_dict() == {"tier": "gold"}, f"metadata merged: {updated.metadata}")

    price = stripe.Price.create(product=product.id, currency="usd", unit_amount=1200,
                                recurring={"interval": "month"}, idempotency_key="official-check-price")
    expect(price.type == "recurring" and price.recurring.interval == "month", "recurring price")
    expect(price.unit_amount == 1200 and price.product == product.id, "price fields")
    price = stripe.Price.modify(price.id, nickname="Monthly", metadata={"plan": "m"})
    expect(price.nickname == "Monthly", "price modified")
    with_default = stripe.Product.modify(product.id, default_price=price.id)
    expect(with_default.default_price == price.id, "default_price set")
    expect_raises(stripe.InvalidRequestError, lambda: stripe.Price.modify(price.id, unit_amount=5),
                  lambda e: expect(e.code == "parameter_unknown", "unit_amount cannot change"))
    expect_raises(stripe.InvalidRequestError, lambda: stripe.Product.delete(product.id),
                  lambda e: expect(e.http_status == 400, "a product with prices is not deleted"))
    doomed = stripe.Product.create(name="Short-lived")
    deleted = stripe.Product.delete(doomed.id)
    expect(deleted.deleted is True and deleted.id == doomed.id, "delete answers deleted: true")
    step("modify (metadata merge and unset), price create/modify, default_price, delete")
    return product, price, doomed


def check_events(product, price, doomed):
    events = list(stripe.Event.list(limit=5).auto_paging_iter())
    kinds = [e.type for e in events]
    expected = ["product.deleted", "product.created", "product.updated", "price.updated",
                "price.created", "product.updated", "product.created"]
    expect(kinds == expected, f"events newest first: {kinds}")
    created = events[-1]
    expect(created.request.idempotency_key == "official-check-product", "request.idempotency_key")
    expect(created.request.id.startswith("req_"), "request.id")
    expect(isinstance(created.data.object, stripe.Product) and created.data.object.id == product.id,
           "data.object typed")
    update = events[-2]
    expect(update.data.previous_attributes["description"] is None, "previous_attributes")
    only = list(stripe.Event.list(types=["price.created", "product.deleted"]).auto_paging_iter())
    expect(sorted(e.type for e in only) == ["price.created", "product.deleted"], "types[] filter")
    expect(stripe.Event.retrieve(created.id).id == created.id, "event retrieve")
    step(f"{len(events)} events listed, filtered and retrieved")
    return events


def check_webhooks(receiver, events, secret):
    deliveries = receiver.take(len(events))
    received = []
    for payload, signature, content_type in deliveries:
        expect(content_type == "application/json", "webhooks are JSON")
        event = stripe.Webhook.construct_event(payload, signature, secret)
        received.append(event.id)
        expect_raises(stripe.SignatureVerificationError,
                      lambda: stripe.Webhook.construct_event(payload, signature, "whsec_wrong"))
    expect(sorted(received) == sorted(e.id for e in events), "every event was delivered")
    step(f"{len(deliveries)} webhooks verified by stripe.Webhook.construct_event")


def check_faults(admin, account):
    stripe.max_network_retries = 0
    admin.call("PUT", f"/accounts/{account['id']}/faults", {"rate_limit_rate": 1.0, "retry_after_secs": 2})
    expect_raises(stripe.RateLimitError, lambda: stripe.Charge.list(limit=1))
    admin.call("PUT", f"/accounts/{account['id']}/faults", {"rate_limit_rate": 0.0, "error_rate": 1.0})
    expect_raises(stripe.APIError, lambda: stripe.Charge.list(limit=1),
                  lambda e: expect(e.http_status == 500, "500 api_error"))
    admin.call("PUT", f"/accounts/{account['id']}/faults", {"error_rate": 0.0})
    expect_raises(stripe.AuthenticationError, lambda: stripe.Charge.list(api_key="sk_test_wrongwrongwrong"))
    stats = admin.call("GET", f"/accounts/{account['id']}/stats")
    expect(stats["rate_limited"] == 1 and stats["errors_injected"] == 1, f"faults counted: {stats}")
    step("429 -> RateLimitError, 500 -> APIError, bad key -> AuthenticationError")


def check_connect(admin, platform):
    connected = admin.call("POST", "/accounts", {"platform": platform["id"]})
    admin.call("POST", f"/accounts/{connected['id']}/generate", {"type": "customers", "count": 15})
    customers = list(stripe.Customer.list(limit=4, stripe_account=connected["id"]).auto_paging_iter())
    expect(len(customers) == 15, f"connect account lists its own customers: {len(customers)}")
    stranger = admin.call("POST", "/accounts", {})
    expect_raises(stripe.PermissionError,
                  lambda: stripe.Customer.list(api_key=stranger["api_key"], stripe_account=connected["id"]))
    step("Stripe-Account reaches a Connect account through its platform's key only")


def check_stripe_client(stripe_base, account):
    client = stripe.StripeClient(account["api_key"], base_addresses={"api": stripe_base})
    page = client.v1.payouts.list({"limit": 3})
    expect(len(page.data) == 3 and page.has_more, "StripeClient lists")
    step("StripeClient (the non-global interface) works too")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    stripe_base = sys.argv[1].rstrip("/") + "/stripe"
    admin = Admin(stripe_base)
    account = admin.call("POST", "/accounts", {})
    receiver = Receiver()
    admin.call("PUT", f"/accounts/{account['id']}/webhook_url", {"url": receiver.url})
    for name, count in GENERATED.items():
        admin.call("POST", f"/accounts/{account['id']}/generate", {"type": name, "count": count})
    step(f"account {account['id']} with {sum(GENERATED.values())} generated objects, stripe {stripe.VERSION}")

    stripe.api_key = account["api_key"]
    stripe.api_base = stripe_base
    check_lists(account)
    product, price, doomed = check_writes()
    events = check_events(product, price, doomed)
    check_webhooks(receiver, events, account["webhook_secret"])
    check_faults(admin, account)
    check_connect(admin, account)
    check_stripe_client(stripe_base, account)
    print("OK: the official stripe library accepted every answer")


if __name__ == "__main__":
    main()
