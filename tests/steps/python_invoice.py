"""A JSON step as a user writes it: an order (a dataclass) in, an invoice (a dict) out; a cancelled order: nothing."""

from dataclasses import dataclass

from util import Property, run_processor

TAX_RATE = Property("tax.rate", float, 0.2, "Tax added to each order's amount.")


@dataclass
class Order:
    id: int
    amount: float
    cancelled: bool = False


def invoice(order: Order, tax_rate: float) -> dict | None:
    if order.cancelled:
        return None
    return {"order": order.id, "total": round(order.amount * (1 + tax_rate), 2)}


if __name__ == "__main__":
    run_processor(invoice, {"tax_rate": TAX_RATE})
