from pullwake.errors import PullwakeError
