"""A fake Stripe API on loopback: Checkout Sessions here, the rest from localstripe.

localstripe has payment intents, charges and refunds but no Checkout
Sessions, so this server serves /v1/checkout/sessions itself, checking
each request's parameters the way stripe-python 16.1's SessionCreateParams
documents them, and forwards every other request to localstripe. Tests
can also make it fail a request, or forward one and then lose the answer
or kill a process, to stand for Stripe outages and crashed workers.
"""

import json
import os
import re
import secrets
import signal
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import stripe

# What the fake accepts on POST /v1/checkout/sessions; Stripe rejects
# parameters it does not know with "Received unknown parameter".
KNOWN_SESSION_PARAMS = {
    "mode",
    "line_items",
    "metadata",
    "client_reference_id",
    "customer_email",
    "expires_at",
    "success_url",
    "cancel_url",
    "payment_intent_data",
    "payment_method_types",
    "customer_creation",
    "locale",
    "ui_mode",
    "expand",
}
MIN_LIFETIME = 30 * 60
MAX_LIFETIME = 24 * 60 * 60
URL = re.compile(r"https?://[^\s]+")
CURRENCY = re.compile(r"[a-z]{3}")


class StripeParamError(Exception):
    def __init__(self, message, param):
        self.param = param
        super().__init__(message)


def decode_form(pairs):
    """Turn Stripe's `a[b][0][c]=v` form encoding into nested dicts and lists."""
    root = {}
    for key, value in pairs:
        parts = re.findall(r"[^\[\]]+", key)
        node = root
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
    return lists_from_indexes(root)


def lists_from_indexes(node):
    if not isinstance(node, dict):
        return node
    converted = {key: lists_from_indexes(value) for key, value in node.items()}
    if converted and all(key.isdigit() for key in converted):
        return [converted[key] for key in sorted(converted, key=int)]
    return converted


def parse_int(value, param, minimum=None):
    if not isinstance(value, str) or not re.fullmatch(r"-?\d+", value):
        raise StripeParamError(f"Invalid integer: {value!r}", param)
    number = int(value)
    if minimum is not None and number < minimum:
        raise StripeParamError(
            f"This value must be greater than or equal to {minimum}.", param
        )
    return number


def check_metadata(metadata, param):
    if not isinstance(metadata, dict):
        raise StripeParamError("Invalid object", param)
    if len(metadata) > 50:
        raise StripeParamError("Metadata can have at most 50 keys.", param)
    for key, value in metadata.items():
        if len(key) > 40:
            raise StripeParamError("Metadata keys can be at most 40 characters.", param)
        if len(value) > 500:
            raise StripeParamError(
                "Metadata values can be at most 500 characters.", param
            )


def check_url(value, param):
    if not isinstance(value, str) or not URL.fullmatch(value) or len(value) > 5000:
        raise StripeParamError("Not a valid URL", param)


def check_line_items(items):
    if not isinstance(items, list) or not 1 <= len(items) <= 100:
        raise StripeParamError(
            "In payment mode, you must provide line_items with 1 to 100 items.",
            "line_items",
        )
    amount = 0
    currencies = set()
    for index, item in enumerate(items):
        param = f"line_items[{index}]"
        if "price" not in item and "price_data" not in item:
            raise StripeParamError(
                "You must specify either price or price_data.", param
            )
        quantity = parse_int(item.get("quantity"), f"{param}[quantity]", minimum=1)
        price = item.get("price_data") or {}
        currency = price.get("currency", "")
        if not CURRENCY.fullmatch(currency):
            raise StripeParamError("Invalid currency", f"{param}[price_data][currency]")
        unit_amount = parse_int(
            price.get("unit_amount"), f"{param}[price_data][unit_amount]", minimum=0
        )
        product = price.get("product_data") or {}
        if not price.get("product") and not product.get("name"):
            raise StripeParamError(
                "Missing required param: product_data[name].",
                f"{param}[price_data][product_data][name]",
            )
        amount += unit_amount * quantity
        currencies.add(currency)
    if len(currencies) != 1:
        raise StripeParamError(
            "All line items must use the same currency.", "line_items"
        )
    return amount, currencies.pop()


def check_session_params(params, now):
    """Check a session request as Stripe documents it; return (amount, currency)."""
    for name in params:
        if name not in KNOWN_SESSION_PARAMS:
            raise StripeParamError(f"Received unknown parameter: {name}", name)
    if params.get("mode") not in ("payment", "setup", "subscription"):
        raise StripeParamError(
            "Invalid mode: must be payment, setup or subscription.", "mode"
        )
    if params["mode"] != "payment":
        raise StripeParamError("This fake supports payment mode only.", "mode")
    amount, currency = check_line_items(params.get("line_items"))
    check_url(params.get("success_url"), "success_url")
    if "cancel_url" in params:
        check_url(params["cancel_url"], "cancel_url")
    if "expires_at" in params:
        lifetime = parse_int(params["expires_at"], "expires_at") - now
        if not MIN_LIFETIME <= lifetime <= MAX_LIFETIME:
            raise StripeParamError(
                "The `expires_at` timestamp must be between 30 minutes and 24 hours "
                "after Checkout Session creation.",
                "expires_at",
            )
    check_metadata(params.get("metadata", {}), "metadata")
    intent_data = params.get("payment_intent_data", {})
    check_metadata(intent_data.get("metadata", {}), "payment_intent_data[metadata]")
    if len(params.get("client_reference_id", "")) > 200:
        raise StripeParamError(
            "client_reference_id is longer than 200 characters.", "client_reference_id"
        )
    if "customer_email" in params and "@" not in params["customer_email"]:
        raise StripeParamError("Invalid email address", "customer_email")
    return amount, currency


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict
    params: dict
    headers: dict


@dataclass
class Fault:
    """What to do to the next `times` requests matching method and path prefix.

    Action "fail" returns `status` with `error`. "lose_answer" forwards the
    request, then returns 500 as if the connection broke. "kill" forwards
    it, then kills process `pid` with SIGKILL before responding.
    """

    method: str
    path: str
    action: str = "fail"
    status: int = 500
    error: dict = field(default_factory=dict)
    times: int = 1
    pid: int | None = None


class FakeStripe:
    def __init__(self, upstream=None):
        self.upstream = upstream
        self.sessions = {}
        self.requests = []
        self.faults = []
        self.fees = {}
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler_class())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def client(self):
        """A client for localstripe itself, to set up payments and count refunds."""
        return stripe.StripeClient(
            "sk_test_fake", base_addresses={"api": self.upstream}, max_network_retries=0
        )

    # Test controls

    def add_fault(self, method, path, **kwargs):
        fault = Fault(method, path, **kwargs)
        with self.lock:
            self.faults.append(fault)
        return fault

    def set_fee(self, payment_intent_id, fee):
        self.fees[payment_intent_id] = fee

    def requests_to(self, method, path):
        return [r for r in self.requests if r.method == method and r.path == path]

    def create_payment(self, amount, currency="usd", metadata=None, confirm=True):
        """Create a card payment intent in localstripe; return its id."""
        client = self.client()
        method = client.v1.payment_methods.create(
            {
                "type": "card",
                "card": {
                    "number": "4242424242424242",
                    "exp_month": 12,
                    "exp_year": 2034,
                    "cvc": "123",
                },
            }
        )
        intent = client.v1.payment_intents.create(
            {
                "amount": amount,
                "currency": currency,
                "payment_method": method.id,
                "confirm": confirm,
                "metadata": metadata or {},
            }
        )
        return intent.id

    def refunds_for(self, payment_intent_id):
        listing = self.client().v1.refunds.list({"payment_intent": payment_intent_id})
        return [refund.to_dict() for refund in listing.auto_paging_iter()]

    def complete_session(self, session_id, *, paid=True, email="buyer@example.com"):
        """Finish a session as Checkout would once the buyer paid or started to."""
        session = self.sessions[session_id]
        metadata = (session["_params"].get("payment_intent_data") or {}).get("metadata")
        session["payment_intent"] = self.create_payment(
            session["amount_total"], session["currency"], metadata, confirm=paid
        )
        session["status"] = "complete"
        session["payment_status"] = "paid" if paid else "unpaid"
        session["customer_details"] = {"email": email}
        session["url"] = None
        return self.public(session)

    def settle_async_payment(self, session_id, *, succeeded=True):
        session = self.sessions[session_id]
        if succeeded:
            self.client().v1.payment_intents.confirm(session["payment_intent"])
            session["payment_status"] = "paid"
        return self.public(session)

    def expire_session(self, session_id):
        session = self.sessions[session_id]
        session["status"] = "expired"
        session["url"] = None
        return self.public(session)

    @staticmethod
    def public(session):
        return {key: value for key, value in session.items() if not key.startswith("_")}

    # Serving

    def handler_class(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):
                pass

            def do_GET(self):
                fake.handle(self, "GET")

            def do_POST(self):
                fake.handle(self, "POST")

            def do_DELETE(self):
                fake.handle(self, "DELETE")

        return Handler

    def handle(self, request, method):
        parsed = urllib.parse.urlsplit(request.path)
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        query = decode_form(
            urllib.parse.parse_qsl(parsed.query, keep_blank_values=True)
        )
        params = decode_form(
            urllib.parse.parse_qsl(body.decode(), keep_blank_values=True)
        )
        with self.lock:
            self.requests.append(
                RecordedRequest(
                    method, parsed.path, query, params, dict(request.headers)
                )
            )
            fault = self.take_fault(method, parsed.path)
        if not request.headers.get("Authorization", "").startswith("Bearer sk_test_"):
            return self.reply(request, 401, error("Invalid API Key provided.", None))
        if fault is not None and fault.action == "fail":
            return self.reply(
                request,
                fault.status,
                {
                    "error": fault.error
                    or {
                        "type": "api_error",
                        "message": "The fake Stripe failed this request.",
                    }
                },
            )
        if parsed.path.startswith("/v1/checkout/sessions"):
            return self.reply(
                request, *self.sessions_api(request, method, parsed.path, query, params)
            )
        status, payload = self.forward(request, method, body)
        if fault is not None and fault.action == "kill":
            os.kill(fault.pid, signal.SIGKILL)
        if fault is not None and fault.action in ("kill", "lose_answer"):
            return self.reply(
                request,
                500,
                {"error": {"type": "api_error", "message": "The connection broke."}},
            )
        return self.reply(request, status, self.with_fee(parsed.path, payload))

    def take_fault(self, method, path):
        for fault in self.faults:
            if (
                fault.times > 0
                and fault.method == method
                and path.startswith(fault.path)
            ):
                fault.times -= 1
                return fault
        return None

    def forward(self, request, method, body):
        if not self.upstream:
            return 404, error("Unrecognized request URL.", None)
        target = urllib.parse.urlsplit(self.upstream)
        connection = HTTPConnection(target.hostname, target.port, timeout=30)
        headers = {
            name: request.headers[name]
            for name in ("Authorization", "Content-Type", "Idempotency-Key")
            if request.headers.get(name)
        }
        connection.request(method, request.path, body=body or None, headers=headers)
        response = connection.getresponse()
        payload = json.loads(response.read() or b"{}")
        connection.close()
        return response.status, payload

    def with_fee(self, path, payload):
        match = re.fullmatch(r"/v1/payment_intents/(pi_\w+)", path)
        if not match or match.group(1) not in self.fees:
            return payload
        charge = payload.get("latest_charge")
        if isinstance(charge, dict) and isinstance(
            charge.get("balance_transaction"), dict
        ):
            charge["balance_transaction"]["fee"] = self.fees[match.group(1)]
        return payload

    @staticmethod
    def reply(request, status, payload):
        body = json.dumps(payload).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(body)))
        request.send_header("Request-Id", f"req_{secrets.token_hex(7)}")
        request.end_headers()
        request.wfile.write(body)

    # Checkout Sessions

    def sessions_api(self, request, method, path, query, params):
        parts = path.strip("/").split("/")
        if method == "POST" and len(parts) == 3:
            return self.create_session(request, params)
        if method == "GET" and len(parts) == 3:
            return self.list_sessions(query)
        session = self.sessions.get(parts[3]) if len(parts) > 3 else None
        if session is None:
            return 404, error(
                f"No such checkout.session: '{parts[-1]}'",
                "session",
                code="resource_missing",
            )
        if method == "GET" and len(parts) == 4:
            return 200, self.public(session)
        if method == "POST" and parts[4:] == ["expire"]:
            if session["status"] != "open":
                return 400, error("Only open Checkout Sessions can be expired.", None)
            return 200, self.expire_session(session["id"])
        return 404, error("Unrecognized request URL.", None)

    def create_session(self, request, params):
        if not request.headers.get("Stripe-Version"):
            return 400, error("Missing Stripe-Version header.", None)
        key = request.headers.get("Idempotency-Key", "")
        if not 1 <= len(key) <= 255:
            return 400, error("Idempotency keys are 1 to 255 characters.", None)
        now = int(time.time())
        try:
            amount, currency = check_session_params(params, now)
        except StripeParamError as exc:
            return 400, error(str(exc), exc.param, code="parameter_invalid")
        session_id = f"cs_test_{secrets.token_hex(24)}"
        session = {
            "id": session_id,
            "object": "checkout.session",
            "mode": "payment",
            "status": "open",
            "payment_status": "unpaid",
            "amount_subtotal": amount,
            "amount_total": amount,
            "currency": currency,
            "metadata": params.get("metadata", {}),
            "client_reference_id": params.get("client_reference_id"),
            "customer_email": params.get("customer_email"),
            "customer_details": None,
            "payment_intent": None,
            "expires_at": int(params.get("expires_at", now + MAX_LIFETIME)),
            "created": now,
            "livemode": False,
            "success_url": params["success_url"],
            "cancel_url": params.get("cancel_url"),
            "url": f"{self.url}/c/pay/{session_id}",
            "_params": params,
        }
        with self.lock:
            self.sessions[session_id] = session
        return 200, self.public(session)

    def list_sessions(self, query):
        created = query.get("created", {})
        since = int(created.get("gte", 0)) if isinstance(created, dict) else 0
        limit = int(query.get("limit", 10))
        found = sorted(
            (s for s in self.sessions.values() if s["created"] >= since),
            key=lambda s: (s["created"], s["id"]),
            reverse=True,
        )
        after = query.get("starting_after")
        if after:
            ids = [s["id"] for s in found]
            found = found[ids.index(after) + 1 :] if after in ids else []
        page = found[:limit]
        return 200, {
            "object": "list",
            "url": "/v1/checkout/sessions",
            "has_more": len(found) > limit,
            "data": [self.public(s) for s in page],
        }


def error(message, param, code=None, error_type="invalid_request_error"):
    body = {"type": error_type, "message": message}
    if param:
        body["param"] = param
    if code:
        body["code"] = code
    return {"error": body}
