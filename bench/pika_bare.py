"""The reference loop without confirms: consume, publish, acknowledge each message, with pika's blocking API.

    python pika_bare.py <amqp url> <input queue> <output exchange> <count> [confirm]

With ``confirm`` the publishing channel is in confirm mode: pika's blocking channel waits for the
broker's confirm of every message (the loop at-least-once needs, done one message at a time).
"""

import sys

import pika


def main(url: str, queue: str, exchange: str, count: int, confirm: bool) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    consuming, publishing = connection.channel(), connection.channel()
    if confirm:
        publishing.confirm_delivery()
    consuming.basic_qos(prefetch_count=250)
    for done, (method, properties, body) in enumerate(consuming.consume(queue), 1):
        publishing.basic_publish(exchange, exchange, body[::-1], pika.BasicProperties(
            content_type=properties.content_type, delivery_mode=2))
        consuming.basic_ack(method.delivery_tag)
        if done >= count:
            break
    connection.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:] == ["confirm"])
