"""Every message of the chosen topics into a CSV file: topic, seq, broker time, JSON data.

    python -m consumer run examples/csv_export.py --csv session.csv --from earliest
"""

import csv
import json

from consumer.api import Consumer

app = Consumer("csv-export")
state = {}


@app.arguments
def options(parser):
    parser.add_argument("--csv", default="messages.csv", help="file to write")
    parser.add_argument("--pattern", default="live.>", help="topics to export")


@app.startup
async def open_file():
    state["file"] = open(app.args.csv, "w", newline="")  # noqa: ASYNC230, SIM115 (once; closed at shutdown)
    state["csv"] = csv.writer(state["file"])
    state["csv"].writerow(["topic", "seq", "broker_time_us", "data"])
    app.add_handler(app.args.pattern, write_row)


async def write_row(message):
    state["csv"].writerow([message.topic, message.seq, message.timestamp_us,
                           json.dumps(message.data, default=str)])


@app.shutdown
async def close_file():
    if "file" in state:
        state["file"].close()


if __name__ == "__main__":
    app.run()
