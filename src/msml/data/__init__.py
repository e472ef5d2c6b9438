"""The dataset's contract (one definition of columns, types, ranges and target) and the preprocessing that
validates, cleans, splits and transforms the raw file into train-ready data."""
