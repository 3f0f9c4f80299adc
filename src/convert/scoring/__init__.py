"""Scoring: probabilities, scores, grades, actions, points and reasons for a population, and allocation of scored leads to sales reps."""
