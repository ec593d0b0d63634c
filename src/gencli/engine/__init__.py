"""The engine: validate a request, resolve the model, build the messages, run a
provider and yield events. Shared by the CLI (sync, httpx) and the server (async,
gencli.transports.httpclient); the two loops below differ only in how bytes arrive.

Glossary (each object is made from the one before it):

``GenerateRequest`` (gencli.core.request)
    What a caller asks for, as given: CLI flags or an HTTP body. Not yet checked; its
    images are raw (base64, data URLs, http(s) URLs, bytes), for any route.
``Plan`` (gencli.engine.plan, made by :func:`prepare`)
    A checked request: the model entry, its adapter, the :class:`Call`, the
    conversation to encode as ``context``, image URLs still to download (each with its
    place among its message's images) and the request's image quota (a server's limits).
``Call`` (gencli.providers.base)
    What the adapter needs for this generation, resolved and immutable: the upstream
    model id, key, base URL, messages, the options the provider takes, the timeout
    and retries, and for a local model its file and load settings.
``HttpRequest`` (gencli.providers.base)
    What an HTTP adapter builds from a Call: method, URL, headers and body, sent by a
    transport (:class:`~gencli.providers.base.SyncTransport` or ``AsyncTransport``).
``Candidate`` (gencli.engine.plan)
    One place a plan can be sent: a model entry (or one of its ``deployments``), its adapter
    and its Call. A plan's candidates are its model's deployments in the order its router
    picked, then its ``fallbacks`` (models.json); the loops (gencli.engine.loop) move to the next one when
    a candidate fails before any output (:func:`gencli.core.retry.falls_back`), never after.
``Run`` (gencli.engine.fold)
    One attempt: folds the adapter's events into the events callers see (text and
    reasoning deltas, tool calls) and the final :class:`~gencli.core.events.Done`.
"""

from gencli.engine.attach import afetch_images, fetch_images
from gencli.engine.checks import IgnoredOptions
from gencli.engine.fold import MAX_ANSWER, AnswerTooLong, Run
from gencli.engine.loop import abatches, aexecute, execute, generate, unload
from gencli.engine.plan import Candidate, Plan, prepare

__all__ = [
    "MAX_ANSWER",
    "AnswerTooLong",
    "Candidate",
    "IgnoredOptions",
    "Plan",
    "Run",
    "abatches",
    "aexecute",
    "afetch_images",
    "execute",
    "fetch_images",
    "generate",
    "prepare",
    "unload",
]
