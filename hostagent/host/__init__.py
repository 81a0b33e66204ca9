"""The only code that touches the host: Executor and HostFS seams and their users."""
