"""The reproduction's validation-only choices and its Table 1 results."""
