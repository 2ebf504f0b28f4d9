"""The deploy engine: releases, plans, execution on hosts, restore."""
