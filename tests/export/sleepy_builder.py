"""A stand-in for onnxruntime-genai's builder (`python -m tests.export.sleepy_builder ARGS`) that only sleeps, so a test
can interrupt an export while its builder subprocess is surely running."""

import time

if __name__ == "__main__":
    time.sleep(120)
