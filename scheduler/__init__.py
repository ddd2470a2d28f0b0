"""The scheduling loop: what runs where and when, and the workers it starts and watches."""
