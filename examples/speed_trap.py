"""A speed-trap board: the top speed through the trap for each driver, best first.

    python -m consumer run examples/speed_trap.py --from earliest

Prints the board whenever a driver goes faster through the speed trap (ST).
"""

from consumer.api import Consumer

app = Consumer("speed-trap")
top_speed: dict[str, int] = {}  # racing number -> km/h


@app.on("live.TimingData")
async def trap(message):
    for number, line in message.data["data"].get("Lines", {}).items():
        speed = line.get("Speeds", {}).get("ST", {}).get("Value") if isinstance(line, dict) else ""
        if speed and int(speed) > top_speed.get(number, 0):
            top_speed[number] = int(speed)
            board = sorted(top_speed.items(), key=lambda item: -item[1])[:5]
            print("speed trap:", "  ".join(f"#{n} {v}" for n, v in board), flush=True)


if __name__ == "__main__":
    app.run()
