"""Domain types shared by every part of Corral. Imports nothing from the rest of the package."""
