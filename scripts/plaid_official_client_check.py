#!/usr/bin/env python3
"""Drives acctor's sandbox bank with Plaid's official Python client (plaid-python).

The official client deserializes every response into typed models and validates
required fields, types (dates, datetimes) and enum values, so a run that reaches the
end proves the sandbox speaks Plaid's wire format well enough for an unmodified Plaid
integration whose base URL was swapped.

Usage:
    python3 -m venv /tmp/plaidvenv && /tmp/plaidvenv/bin/pip install plaid-python
    cargo run -- sandbox --listen 127.0.0.1:0        # prints the sandbox URL
    /tmp/plaidvenv/bin/python scripts/plaid_official_client_check.py http://127.0.0.1:PORT

Credentials default to config/default.toml's (acctor-demo-client / acctor-demo-secret);
override with PLAID_CLIENT_ID / PLAID_SECRET. Exits non-zero at the first failure.
"""

import base64
import datetime
import hashlib
import http.server
import json
import os
import queue
import re
import sys
import threading
import urllib.request

import plaid
from plaid.api import plaid_api
from plaid.model.item_error_webhook import ItemErrorWebhook
from plaid.model.custom_sandbox_transaction import CustomSandboxTransaction
from plaid.model.item_get_request import ItemGetRequest
from plaid.model.item_public_token_exchange_request import ItemPublicTokenExchangeRequest
from plaid.model.plaid_error import PlaidError
from plaid.model.products import Products
from plaid.model.sandbox_item_fire_webhook_request import SandboxItemFireWebhookRequest
from plaid.model.sandbox_item_reset_login_request import SandboxItemResetLoginRequest
from plaid.model.sandbox_public_token_create_request import SandboxPublicTokenCreateRequest
from plaid.model.sandbox_public_token_create_request_options import (
    SandboxPublicTokenCreateRequestOptions,
)
from plaid.model.sandbox_transactions_create_request import SandboxTransactionsCreateRequest
from plaid.model.sync_updates_available_webhook import SyncUpdatesAvailableWebhook
from plaid.model.transactions_get_request import TransactionsGetRequest
from plaid.model.transactions_get_request_options import TransactionsGetRequestOptions
from plaid.model.transactions_sync_request import TransactionsSyncRequest
from plaid.model.webhook_verification_key_get_request import WebhookVerificationKeyGetRequest

# Optional in Plaid's schema yet present in every answer of Plaid's (enrichment is on
# by default): the client raises ApiAttributeError on reading an absent one, so code
# written against Plaid would break on a sandbox that leaves them out.
ALWAYS_PRESENT = {
    "Transaction": ["account_owner", "authorized_date", "authorized_datetime", "category",
                    "category_id", "check_number", "counterparties", "datetime", "location",
                    "logo_url", "merchant_entity_id", "merchant_name", "payment_meta",
                    "pending_transaction_id", "personal_finance_category", "transaction_code",
                    "website"],
    "Item": ["institution_id", "institution_name", "products", "consented_products",
             "auth_method"],
}

# A webhook the sandbox fires synchronously arrives within this long or never.
WEBHOOK_WAIT_SECONDS = 10


def check(condition, message):
    if not condition:
        raise AssertionError(message)


DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def strict(raw, types, path="$"):
    """Checks raw JSON against the client's schema metadata more strictly than the
    client itself: plaid-python accepts any enum value (its check_allowed_values is a
    deliberate no-op so that new Plaid values do not break old clients), parses dates
    leniently with dateutil and keeps unknown fields. A sandbox must emit only values
    Plaid documents, so here an unknown enum value, a date not in YYYY-MM-DD, a
    datetime not in RFC 3339 or a field the schema does not know fails the run."""
    if raw is None:
        check(plaid.model_utils.none_type in types or any(
            isinstance(t, type) and issubclass(t, plaid.model_utils.OpenApiModel)
            and getattr(t, "_nullable", False) for t in types), "%s: null not allowed" % path)
        return
    for t in types:
        if isinstance(t, list):
            check(isinstance(raw, list), "%s: expected a list" % path)
            for i, element in enumerate(raw):
                strict(element, tuple(t), "%s[%d]" % (path, i))
            return
        if isinstance(t, dict):
            return
        if t is datetime.datetime:
            check(isinstance(raw, str) and DATETIME.match(raw), "%s: bad datetime %r" % (path, raw))
            return
        if t is datetime.date:
            check(isinstance(raw, str) and DATE.match(raw), "%s: bad date %r" % (path, raw))
            return
        if isinstance(t, type) and issubclass(t, plaid.model_utils.ModelSimple):
            allowed = set(t.allowed_values.get(("value",), {}).values())
            check(not allowed or raw in allowed, "%s: %r not one of %s" % (path, raw, sorted(
                str(v) for v in allowed)))
            return
        if isinstance(t, type) and issubclass(t, plaid.model_utils.ModelComposed):
            schemas = t._composed_schemas
            known = set()
            for part in schemas["allOf"]:
                known |= set(part.attribute_map.values())
                strict_object(raw, part, path, check_unknown=False)
            unknown = set(raw) - known - set(t.attribute_map.values())
            check(not unknown, "%s: fields unknown to %s: %s" % (path, t.__name__, sorted(unknown)))
            return
        if isinstance(t, type) and issubclass(t, plaid.model_utils.ModelNormal):
            strict_object(raw, t, path, check_unknown=True)
            return
    # Primitive types (str, float, bool, int): the client's own type check covers them.


def strict_object(raw, model, path, check_unknown):
    check(isinstance(raw, dict), "%s: expected an object for %s" % (path, model.__name__))
    by_json_name = {json_name: name for name, json_name in model.attribute_map.items()}
    if check_unknown:
        unknown = set(raw) - set(by_json_name)
        check(not unknown, "%s: fields unknown to %s: %s" % (path, model.__name__, sorted(unknown)))
    for json_name, value in raw.items():
        name = by_json_name.get(json_name)
        if name is None:
            continue
        allowed = model.allowed_values.get((name,))
        if allowed and value is not None:
            values = value if isinstance(value, list) else [value]
            for v in values:
                check(v in allowed.values(), "%s.%s: %r not one of %s" % (
                    path, json_name, v, sorted(allowed.values())))
        strict(value, model.openapi_types[name], "%s.%s" % (path, json_name))


class StrictApiClient(plaid.ApiClient):
    """The official ApiClient, plus `strict` on every successful response body."""

    def deserialize(self, response, response_type, _check_type):
        strict(json.loads(response.data), response_type, response_type[0].__name__)
        return super().deserialize(response, response_type, _check_type)


def check_present(model, kind):
    for name in ALWAYS_PRESENT[kind]:
        try:
            getattr(model, name)
        except plaid.ApiAttributeError:
            raise AssertionError("%s.%s is absent (Plaid always sends it)" % (kind, name))


def deserialize_error(client, exception):
    """An ApiException's body as the client's PlaidError model, through `strict`."""
    fake = type("Response", (), {"data": exception.body})()
    return client.api_client.deserialize(fake, (PlaidError,), True)


def deserialize_webhook(client, body, model):
    """A webhook body through the same checks as an API response."""
    fake = type("Response", (), {"data": body})()
    return client.api_client.deserialize(fake, (model,), True)


def b64url(segment):
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def b64url_json(segment):
    return json.loads(b64url(segment))


# NIST P-256, for checking the webhook JWT's ES256 signature without extra packages.
P256_P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
P256_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
P256_G = (0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
          0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5)


def p256_add(a, b):
    if a is None:
        return b
    if b is None:
        return a
    if a[0] == b[0] and (a[1] + b[1]) % P256_P == 0:
        return None
    if a == b:
        slope = (3 * a[0] * a[0] - 3) * pow(2 * a[1], -1, P256_P)
    else:
        slope = (b[1] - a[1]) * pow(b[0] - a[0], -1, P256_P)
    x = (slope * slope - a[0] - b[0]) % P256_P
    return x, (slope * (a[0] - x) - a[1]) % P256_P


def p256_mul(k, point):
    result = None
    while k:
        if k & 1:
            result = p256_add(result, point)
        point = p256_add(point, point)
        k >>= 1
    return result


def es256_verify(jwk, jwt):
    """Whether `jwt` (compact JWS) carries a valid ES256 signature by the P-256 `jwk`."""
    signing_input, _, signature = jwt.rpartition(".")
    signature = b64url(signature)
    if len(signature) != 64:
        return False
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    if not (0 < r < P256_N and 0 < s < P256_N):
        return False
    q = (int.from_bytes(b64url(jwk.x), "big"), int.from_bytes(b64url(jwk.y), "big"))
    if (q[1] ** 2 - q[0] ** 3 + 3 * q[0] - P256_B) % P256_P != 0:
        return False
    e = int.from_bytes(hashlib.sha256(signing_input.encode()).digest(), "big")
    w = pow(s, -1, P256_N)
    point = p256_add(p256_mul(e * w % P256_N, P256_G), p256_mul(r * w % P256_N, q))
    return point is not None and point[0] % P256_N == r


class WebhookReceiver:
    """A tiny HTTP server on an ephemeral port that queues every POST it gets."""

    def __init__(self):
        received = self.received = queue.Queue()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                received.put((dict(self.headers), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d/webhooks/plaid" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def next(self, webhook_code):
        """The next webhook with `webhook_code`, skipping others (e.g. from item creation)."""
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=WEBHOOK_WAIT_SECONDS)
        while True:
            remaining = (deadline - datetime.datetime.now()).total_seconds()
            check(remaining > 0, "no %s webhook received" % webhook_code)
            headers, body = self.received.get(timeout=remaining)
            if json.loads(body).get("webhook_code") == webhook_code:
                return headers, body

    def close(self):
        self.server.shutdown()


def admin_post(client, path, body):
    request = urllib.request.Request(
        client.api_client.configuration.host + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def sync_all(client, access_token, cursor=""):
    """Pages /transactions/sync until has_more is false, the way Plaid documents it:
    on TRANSACTIONS_SYNC_MUTATION_DURING_PAGINATION, drop the pages of this loop and
    restart from the loop's first cursor. Returns (added, modified, removed, cursor,
    pages of the loop that completed, restarts)."""
    first_cursor, restarts = cursor, 0
    added, modified, removed, pages = [], [], [], 0
    while True:
        try:
            response = client.transactions_sync(
                TransactionsSyncRequest(access_token=access_token, cursor=cursor, count=500)
            )
        except plaid.ApiException as e:
            error = deserialize_error(client, e)
            if error.error_code != "TRANSACTIONS_SYNC_MUTATION_DURING_PAGINATION":
                raise
            check(e.status == 400 and str(error.error_type) == "TRANSACTIONS_ERROR", e.body)
            check(restarts < 5, "mutation during pagination keeps coming")
            restarts += 1
            cursor, added, modified, removed, pages = first_cursor, [], [], [], 0
            continue
        pages += 1
        added += response.added
        modified += response.modified
        removed += response.removed
        cursor = response.next_cursor
        if not response.has_more:
            return added, modified, removed, cursor, pages, restarts


def main(base_url):
    configuration = plaid.Configuration(
        host=base_url,
        api_key={
            "clientId": os.environ.get("PLAID_CLIENT_ID", "acctor-demo-client"),
            "secret": os.environ.get("PLAID_SECRET", "acctor-demo-secret"),
            "plaidVersion": "2020-09-14",
        },
    )
    client = plaid_api.PlaidApi(StrictApiClient(configuration))
    receiver = WebhookReceiver()
    try:
        run(client, receiver)
    finally:
        receiver.close()


def run(client, receiver):
    print("plaid-python %s against %s" % (plaid.__version__, client.api_client.configuration.host))

    created = client.sandbox_public_token_create(
        SandboxPublicTokenCreateRequest(
            institution_id="ins_109508",
            initial_products=[Products("transactions")],
            options=SandboxPublicTokenCreateRequestOptions(webhook=receiver.url),
        )
    )
    check(created.public_token.startswith("public-sandbox-"), created.public_token)
    print("sandbox_public_token_create: ok (%s...)" % created.public_token[:22])

    exchanged = client.item_public_token_exchange(
        ItemPublicTokenExchangeRequest(public_token=created.public_token)
    )
    access_token, item_id = exchanged.access_token, exchanged.item_id
    check(access_token.startswith("access-sandbox-"), access_token)
    print("item_public_token_exchange: ok (item_id %s)" % item_id)

    added, modified, removed, cursor, pages, _ = sync_all(client, access_token)
    check(len(added) > 0, "initial sync returned no transactions")
    ids = {t.transaction_id for t in added}
    check(len(ids) == len(added), "duplicate transaction ids in the initial sync")
    check(all(isinstance(t.date, datetime.date) for t in added), "dates not parsed as dates")
    for t in added:
        check_present(t, "Transaction")
    enriched = [t for t in added if t.counterparties]
    check(enriched and all(t.personal_finance_category.confidence_level for t in enriched),
          "no enriched transaction")
    accounts = {a.account_id for a in client.transactions_sync(
        TransactionsSyncRequest(access_token=access_token, cursor=cursor, count=500)
    ).accounts}
    check(all(t.account_id in accounts for t in added), "transaction on an unknown account")
    print(
        "transactions_sync: ok (%d pages, %d added, %d modified, %d removed, %d accounts)"
        % (pages, len(added), len(modified), len(removed), len(accounts))
    )

    dates = sorted(t.date for t in added)
    start, end = dates[0], dates[-1]
    seen, offset, total = [], 0, None
    while total is None or offset < total:
        page = client.transactions_get(
            TransactionsGetRequest(
                access_token=access_token,
                start_date=start,
                end_date=end,
                options=TransactionsGetRequestOptions(count=40, offset=offset),
            )
        )
        total = page.total_transactions
        check(page.item.item_id == item_id, "transactions_get returned another item")
        check(len(page.transactions) > 0, "empty page before total was reached")
        seen += page.transactions
        offset += len(page.transactions)
    check(len(seen) == total, "paged %d of %d" % (len(seen), total))
    for t in seen:
        check_present(t, "Transaction")
    check({t.transaction_id for t in seen} == ids, "/transactions/get and /sync disagree")
    check(len(seen) > 40, "transactions_get did not page")
    print("transactions_get: ok (%d transactions %s..%s in pages of 40)" % (total, start, end))

    item_response = client.item_get(ItemGetRequest(access_token=access_token))
    item = item_response.item
    check(item.item_id == item_id, "item_get returned another item")
    check_present(item, "Item")
    check("status" in item_response, "item_get response without status")
    check(item.webhook == receiver.url, "item webhook %r" % item.webhook)
    check(item.error is None, "fresh item has an error")
    print("item_get: ok (institution %s %r, update_type %s)"
          % (item.institution_id, item.institution_name, item.update_type))

    fired = client.sandbox_item_fire_webhook(
        SandboxItemFireWebhookRequest(access_token=access_token, webhook_code="SYNC_UPDATES_AVAILABLE")
    )
    check(fired.webhook_fired, "webhook not fired")
    headers, body = receiver.next("SYNC_UPDATES_AVAILABLE")
    headers = {k.lower(): v for k, v in headers.items()}
    jwt = headers.get("plaid-verification")
    check(jwt, "webhook without a Plaid-Verification header")
    jwt_header_b64, claims_b64, _signature = jwt.split(".")
    jwt_header, claims = b64url_json(jwt_header_b64), b64url_json(claims_b64)
    check(jwt_header.get("alg") == "ES256", "jwt alg %r" % jwt_header.get("alg"))
    check(claims["request_body_sha256"] == hashlib.sha256(body).hexdigest(), "body hash mismatch")
    webhook = deserialize_webhook(client, body, SyncUpdatesAvailableWebhook)
    check(webhook.item_id == item_id and webhook.webhook_type == "TRANSACTIONS", webhook)
    key = client.webhook_verification_key_get(
        WebhookVerificationKeyGetRequest(key_id=jwt_header["kid"])
    ).key
    check(key.kid == jwt_header["kid"] and key.alg == "ES256" and key.crv == "P-256", key)
    check(key.expired_at is None, "current key has expired_at %r" % key.expired_at)
    check(es256_verify(key, jwt), "webhook JWT signature does not verify with the served key")
    tampered = jwt[:-4] + ("AAAA" if not jwt.endswith("AAAA") else "BBBB")
    check(not es256_verify(key, tampered), "a tampered signature verified")
    check(abs(claims["iat"] - datetime.datetime.now().timestamp()) < 300, "iat %r" % claims["iat"])
    print("webhook_verification_key_get: ok (kid %s, ES256 signature and body hash verified)"
          % key.kid)

    today = datetime.date.today()
    client.sandbox_transactions_create(
        SandboxTransactionsCreateRequest(
            access_token=access_token,
            transactions=[
                CustomSandboxTransaction(
                    date_transacted=today - datetime.timedelta(days=1),
                    date_posted=today,
                    amount=12.34,
                    description="acctor compat check",
                    iso_currency_code="USD",
                )
            ],
        )
    )
    new_added, _, _, cursor, _, _ = sync_all(client, access_token, cursor)
    check(
        [(t.name, t.amount, t.date) for t in new_added] == [("acctor compat check", 12.34, today)],
        "created transaction not synced: %r" % [(t.name, t.amount, t.date) for t in new_added],
    )
    print("sandbox_transactions_create: ok (synced back: 1 added)")

    # Not Plaid's API: the sandbox's admin endpoint, to get updates of every kind and
    # more than one page of them, so that modified and removed entries and the cursor
    # paging at count=500 go through the client's models too.
    admin_post(client, "/admin/items/%s/mutate" % item_id,
               {"add": 1200, "modify": 20, "remove": 5, "fire_webhook": False})
    # One injected TRANSACTIONS_SYNC_MUTATION_DURING_PAGINATION on a mid-loop page: the
    # loop must restart from its first cursor and still see every update exactly once.
    admin_post(client, "/admin/items/%s/faults" % item_id, {"mutation_during_pagination": 1})
    new_added, new_modified, new_removed, cursor, pages, restarts = sync_all(
        client, access_token, cursor)
    check(restarts == 1, "expected one restart, got %d" % restarts)
    check((len(new_added), len(new_modified), len(new_removed)) == (1200, 20, 5),
          "after mutate: %d added, %d modified, %d removed"
          % (len(new_added), len(new_modified), len(new_removed)))
    check(pages == 3, "1225 updates at count=500 took %d pages" % pages)
    check(all(r.account_id in accounts for r in new_removed), "removed without its account")
    for t in new_added + new_modified:
        check_present(t, "Transaction")
    print("transactions_sync after admin mutate: ok (%d pages, 1200 added, 20 modified, 5 removed, "
          "1 restart after TRANSACTIONS_SYNC_MUTATION_DURING_PAGINATION)" % pages)

    admin_post(client, "/admin/items/%s/faults" % item_id, {"reject_cursor": 1})
    try:
        client.transactions_sync(TransactionsSyncRequest(access_token=access_token, cursor=cursor))
        raise AssertionError("rejected cursor accepted")
    except plaid.ApiException as e:
        error = deserialize_error(client, e)
        check(e.status == 400 and error.error_code == "INVALID_FIELD", e.body)
        check(str(error.error_type) == "INVALID_REQUEST", e.body)
    print("transactions_sync cursor fault: ok (ApiException 400 INVALID_REQUEST/INVALID_FIELD)")

    reset = client.sandbox_item_reset_login(SandboxItemResetLoginRequest(access_token=access_token))
    check(reset.reset_login, "reset_login false")
    _headers, body = receiver.next("ERROR")
    webhook = deserialize_webhook(client, body, ItemErrorWebhook)
    check(webhook.error.error_code == "ITEM_LOGIN_REQUIRED", webhook)
    item = client.item_get(ItemGetRequest(access_token=access_token)).item
    check(item.error is not None and item.error.error_code == "ITEM_LOGIN_REQUIRED", item.error)
    try:
        client.transactions_sync(TransactionsSyncRequest(access_token=access_token, cursor=cursor))
        raise AssertionError("sync after reset_login succeeded")
    except plaid.ApiException as e:
        error = deserialize_error(client, e)
        check(e.status == 400 and error.error_code == "ITEM_LOGIN_REQUIRED", e.body)
        check(str(error.error_type) == "ITEM_ERROR", e.body)
    print("sandbox_item_reset_login: ok (ITEM/ERROR webhook, item.error ITEM_LOGIN_REQUIRED, "
          "sync refused)")

    try:
        client.item_get(ItemGetRequest(access_token="access-sandbox-not-a-real-token"))
        raise AssertionError("bad access token accepted")
    except plaid.ApiException as e:
        error = json.loads(e.body)
        check(e.status == 400, "status %s" % e.status)
        check(error["error_type"] == "INVALID_INPUT", error)
        check(error["error_code"] == "INVALID_ACCESS_TOKEN", error)
        check(error["request_id"] and error["error_message"], error)
        check(deserialize_error(client, e).error_code == "INVALID_ACCESS_TOKEN", e.body)
    print("error path: ok (ApiException 400 INVALID_INPUT/INVALID_ACCESS_TOKEN)")

    configuration = client.api_client.configuration
    wrong = plaid.Configuration(
        host=configuration.host,
        api_key={"clientId": configuration.api_key["clientId"], "secret": "wrong-secret"},
    )
    try:
        plaid_api.PlaidApi(StrictApiClient(wrong)).item_get(ItemGetRequest(access_token=access_token))
        raise AssertionError("wrong secret accepted")
    except plaid.ApiException as e:
        error = deserialize_error(client, e)
        check(e.status == 400 and error.error_code == "INVALID_API_KEYS", e.body)
    print("error path: ok (ApiException 400 INVALID_INPUT/INVALID_API_KEYS)")
    print("ALL CHECKS PASSED")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: plaid_official_client_check.py SANDBOX_BASE_URL")
    main(sys.argv[1].rstrip("/"))
