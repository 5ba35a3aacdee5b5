"""W3C trace context carried in Redis stream entry fields.

A propagator writes ``traceparent`` and ``tracestate`` as separate entry
fields, exactly as it would write HTTP headers. The services pass the W3C
trace-context propagator explicitly: baggage from a webhook sender is never
stored in the stream nor forwarded to Evolution.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, Setter, TextMapPropagator


class StreamFieldsGetter(Getter[Mapping[str, str]]):
    """Reads propagation fields from a stream entry's field mapping."""

    def get(self, carrier: Mapping[str, str], key: str) -> list[str] | None:
        value = carrier.get(key)
        return [value] if value is not None else None

    def keys(self, carrier: Mapping[str, str]) -> list[str]:
        return list(carrier)


class StreamFieldsSetter(Setter[MutableMapping[str, str]]):
    """Writes propagation fields into a stream entry's field mapping."""

    def set(self, carrier: MutableMapping[str, str], key: str, value: str) -> None:
        carrier[key] = value


GETTER = StreamFieldsGetter()
SETTER = StreamFieldsSetter()


def inject_into_fields(
    fields: MutableMapping[str, str],
    context: Context | None = None,
    propagator: TextMapPropagator | None = None,
) -> None:
    """Add the current (or given) trace context to ``fields``, with the given
    propagator or else the configured global one."""
    if propagator is not None:
        propagator.inject(fields, context=context, setter=SETTER)
    else:
        propagate.inject(fields, context=context, setter=SETTER)


def extract_from_fields(fields: Mapping[str, str]) -> Context:
    """The trace context carried by a stream entry (empty if none or invalid)."""
    return propagate.extract(fields, getter=GETTER)
