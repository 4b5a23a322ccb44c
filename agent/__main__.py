from l2mu.agent.cli import app

app(prog_name="l2mu-agent")
