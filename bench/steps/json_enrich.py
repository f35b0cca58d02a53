"""The JSON step of ``make bench``: an order (a JSON object) in, the same order with its total added out."""

from util import run_processor


def enrich(order: dict) -> dict:
    order["total"] = round(order["quantity"] * order["price"], 2)
    return order


if __name__ == "__main__":
    run_processor(enrich)
