"""Sending a response model without FastAPI validating it again.

For a route with ``response_model=M`` that returns an ``M``, FastAPI dumps the model,
validates the dump against ``M`` again and serialises the result. The agents' sync and
job submission are the busiest routes, so they return the JSON of the model they built
(the same bytes) and keep ``response_model`` for the OpenAPI document.
"""

from __future__ import annotations

from fastapi import Response
from pydantic import BaseModel


def model_response(model: BaseModel, status_code: int = 200) -> Response:
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")
