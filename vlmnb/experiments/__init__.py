"""The paper's experiments (E1-E6), each on the result store's resumable loop, and the paper's numbers."""
