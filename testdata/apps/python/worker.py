"""The sample's second process: prints one greeting and exits."""

import greeting

print("worker: " + greeting.hello("worker"))
