"""The shared vocabulary every layer may use: errors, span names, image loading, text helpers,
yes/no answer scoring. Imports nothing else from vlmnb."""
